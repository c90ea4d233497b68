"""The C hashing kernels give the bits the numba kernels and the NumPy programs give.

Each C function is a twin of a numba kernel (``hashkernels.c`` says which); these tests run
both on real text (T0 prompts) plus the characters each kernel treats specially (case folds
that change length, context-dependent lower-casing, combining marks, CJK, emoji), and compare
every output array. A kernel that drifted from its twin by one bit fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from datadiet.selectors import exact, hashing, minhash, native, unicode_tables
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(
    not native.available() and shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="no C compiler: the C kernels cannot be built here")

ODD_TEXTS = [
    "Straße ÉCOLE ǅ ß İstanbul ΣΑΣ café\u0301 ﬁne",
    "ΟΔΥΣΣΕΥΣ ΚΑΙ ΣΟΦΙΑ",  # final sigma: str.lower's context rule
    "日本語のテキスト です。 한국어 ",
    "emoji 🙂🙃 and ＦＵＬＬＷＩＤＴＨ letters",
    "",
    "   \t\n ",
    "!!!",
    "one",
    "a b c d e f g h i j",
    "ⱥȺ Ⱥ",  # a fold that needs more UTF-8 bytes than its source
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    path = sorted((SHARED_DATA / "sft" / "t0_train").glob("*.jsonl"))[0]
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line, _ in zip(handle, range(3000), strict=False):
            record = json.loads(line)
            rows.append(record["prompt"] + record["completion"])
    rows += ODD_TEXTS
    rows += rows[:400]  # exact copies, so the LSH buckets hold real pairs
    return rows


def test_the_library_is_built_and_loads() -> None:
    """``make install`` builds it; a test run without it would silently test numba twice."""
    assert native.available(), f"{native.LIBRARY} missing: run python -m datadiet.selectors.native build"


def test_normalize_matches_the_numba_kernel(texts: list[str]) -> None:
    buf, offsets = hashing.utf8_layout(pa.array(texts))
    tables = exact._normalize_tables()
    for mode_value in (0, 1):
        mode = np.full(len(texts), mode_value, np.uint8)
        mode[::7] = 2  # texts left to Python
        c_out, c_len = native.normalize(buf, offsets, mode, *tables)
        nb_out, nb_len = exact._nb_normalize(buf, offsets, mode, *tables)
        assert np.array_equal(c_len, nb_len)
        assert (c_len == -1).sum() >= len(texts) // 7
        for i in np.flatnonzero(c_len >= 0):
            lo = offsets[i]
            assert c_out[lo : lo + c_len[i]].tobytes() == nb_out[lo : lo + nb_len[i]].tobytes()


def test_exact_hashes_equal_on_every_path(texts: list[str], monkeypatch) -> None:
    """The digests the C path gives are those of :func:`datadiet.pipeline.text.normalize`."""
    with_c = exact.text_hashes(pa.array(texts), True)
    monkeypatch.setenv("DATADIET_NATIVE", "0")
    native._library.cache_clear()
    monkeypatch.setenv("DATADIET_NUMBA", "0")
    try:
        plain = exact.text_hashes(texts, True)
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
    assert np.array_equal(with_c, plain)
    assert len(np.unique(with_c, axis=0)) < len(texts)  # the copies hash alike


def test_minhash_shard_matches_the_numba_kernel_and_numpy(texts: list[str]) -> None:
    buf, offsets = hashing.utf8_layout(pa.array(texts))
    pos, salt = minhash._shingle_constants(42, 5)
    a, b = minhash._perm_constants(42, 128)
    constants = (hashing.word_char_table(), hashing.lower_table(), minhash._ascii_word_table(),
                 minhash._CHAR_MULT, 5, pos, salt, a, b, minhash._band_constants(42, 16, 8),
                 minhash._U64(minhash._BAND_TAG))
    c_sig, c_keys, c_counts = native.minhash_shard(buf, offsets, *constants)
    nb_sig, nb_keys, nb_counts = minhash._nb_shard(buf, offsets, *constants)
    assert np.array_equal(c_sig, nb_sig)
    assert np.array_equal(c_keys, nb_keys)
    assert np.array_equal(c_counts, nb_counts)
    # and the public function (C inside) equals the NumPy program built on words()
    shard = minhash.minhash_shard(texts[:300] + ODD_TEXTS, bands=16, rows=8)
    hashes, hash_offsets = minhash.shingle_hashes_reference(texts[:300] + ODD_TEXTS, ngram=5)
    reference = minhash._signatures_numpy(hashes, hash_offsets, 128, 42)
    assert np.array_equal(shard.signatures, reference)


def test_lsh_pairs_and_agreement_match_the_numba_kernels(texts: list[str]) -> None:
    shard = minhash.minhash_shard(pa.array(texts), bands=16, rows=8)
    rows = np.flatnonzero(shard.has_words)
    n = len(texts)
    for all_pairs in (False, True):
        c_codes = np.sort(native.bucket_pairs(shard.band_keys, rows, all_pairs, 256, n))
        nb_codes = np.sort(minhash._nb_bucket_pairs(shard.band_keys, rows, all_pairs, 256, n))
        assert np.array_equal(c_codes, nb_codes) and len(c_codes) >= 400
    pairs = np.stack([c_codes // n, c_codes % n], axis=1)
    assert np.array_equal(native.pair_jaccard(shard.signatures, pairs),
                          minhash._nb_pair_jaccard(shard.signatures, pairs))


def test_non_ascii_and_needle_scans_match(texts: list[str]) -> None:
    buf, offsets = hashing.utf8_layout(pa.array(texts))
    assert hashing.non_ascii_texts(buf, offsets).tolist() == [
        i for i, t in enumerate(texts) if not t.isascii()]
    assert hashing.texts_containing(buf, offsets, "\u0130\u03a3").tolist() == [
        i for i, t in enumerate(texts) if "\u0130" in t or "\u03a3" in t]


def test_results_do_not_depend_on_the_thread_count(texts: list[str], monkeypatch) -> None:
    """Batches are split into document ranges across threads; one thread or four, same bits."""
    monkeypatch.setenv("DATADIET_THREADS", "1")
    one = minhash.minhash_shard(pa.array(texts), bands=16, rows=8)
    monkeypatch.setenv("DATADIET_THREADS", "4")
    four = minhash.minhash_shard(pa.array(texts), bands=16, rows=8)
    assert np.array_equal(one.signatures, four.signatures)
    assert np.array_equal(one.band_keys, four.band_keys)


def test_build_replaces_the_library_atomically(tmp_path, monkeypatch) -> None:
    """A build goes through the atomic writer (a temp file beside the library, renamed): no
    half-written library, no temp file left, modes by the umask; a failing compiler names
    itself and leaves the old library in place."""
    before = native.LIBRARY.read_bytes() if native.LIBRARY.exists() else None
    fake_cc = tmp_path / "cc"
    fake_cc.write_text("#!/bin/sh\necho 'cc: error: simulated' >&2\nexit 1\n")
    fake_cc.chmod(0o755)
    with pytest.raises(RuntimeError, match="simulated"):
        native.build(str(fake_cc), quiet=True)
    assert (native.LIBRARY.read_bytes() if native.LIBRARY.exists() else None) == before
    assert not list(native.LIBRARY.parent.glob("._*"))  # the atomic writer's temp names
    proc = subprocess.run([sys.executable, "-m", "datadiet.selectors.native", "build"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and native.LIBRARY.exists(), proc.stderr
    assert native.UNICODE_TABLES.exists()
    assert not list(native.LIBRARY.parent.glob("._*"))


@pytest.mark.parametrize("verify", [True, False])
def test_fused_cluster_equals_pairs_then_components(texts: list[str], verify: bool) -> None:
    """The one-pass C reduce (buckets, verification and union-find, no pair array) gives the
    labels and pair counts of the three-stage reduce it replaces."""
    shard = minhash.minhash_shard(pa.array(texts), bands=16, rows=8)
    labels, candidates, merged = native.minhash_cluster(
        shard.band_keys, np.flatnonzero(shard.has_words), shard.signatures, 0.8, verify)
    pairs = minhash._unique_pairs(
        np.stack(np.divmod(minhash._nb_bucket_pairs(
            shard.band_keys, np.flatnonzero(shard.has_words), verify, 256, len(texts)),
            len(texts)), axis=1), len(texts))
    assert candidates == len(pairs)
    if verify:
        pairs = pairs[minhash._nb_pair_jaccard(shard.signatures, pairs) >= 0.8]
    assert merged == len(pairs) and merged >= 400
    assert np.array_equal(labels, minhash.connected_components(len(texts), pairs))


def test_kernel_nfkc_equals_unicodedata_for_every_code_point() -> None:
    """Every code point alone and between a letter and a combining accent (where composition
    and reordering happen) normalises in the C kernel exactly as in ``normalize()``: the NFKC
    classes built from ``unicodedata`` at install time leave nothing to chance."""
    assert native.nfkc_tables() is not None, "the NFKC classes were not built with the library"
    for name, fresh in unicode_tables.build_character_tables().items():  # the saved tables are current
        assert np.array_equal(native.unicode_table(name), fresh), name
    from datadiet.pipeline.text import normalize

    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    for texts in (chars, [f"a{c}\u0301{c}b" for c in chars]):
        got = exact.text_hashes(pa.array(texts), True)
        want = np.frombuffer(b"".join(
            xxhash.xxh3_128_digest(normalize(t).encode("utf-8")) for t in texts),
            np.uint64).reshape(-1, 2)
        wrong = np.flatnonzero((got != want).any(axis=1))
        assert len(wrong) == 0, [hex(ord(texts[i][0 if len(texts[i]) == 1 else 1]))
                                 for i in wrong[:10]]
