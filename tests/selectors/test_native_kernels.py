"""The C hashing kernels (production) give the bits of the Python reference, and so does the
NumPy fallback that runs where the library is not built.

The reference is the plain definition: :func:`datadiet.pipeline.text.normalize` for exact dedup,
:func:`~datadiet.selectors.minhash.minhash_shard_reference` (shingles of ``words()``, a minimum
per permutation, band keys in Python integers) and
:func:`~datadiet.selectors.minhash.minhash_clusters_reference` (a dict of buckets, a loop of
slot comparisons, a union-find) for MinHash. These tests run C and reference on real text (T0
prompts) plus the characters each kernel treats specially (case folds that change length,
context-dependent lower-casing, combining marks, CJK, emoji), and compare every output array.
A kernel that drifted from the reference by one bit fails here.
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

from datadiet.pipeline.text import normalize
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


# Beyond the T0 rows: what the tokeniser treats specially (dotted capital I, sigma, ligatures,
# lone surrogates kept by the layout, words longer than the 64 character multipliers).
TRICKY = ["İstanbul İSTANBUL", "ΣΑΣ ΟΔΟΣ σας", "Straße STRASSE ǅemal", "naïve café_x 123 ×y ½",
          "tab\tsep\nnew line\r\nwin", "Ⅻ roman Ⅰ numerals", "K Kelvin sign, Å angstrom",
          "lone \ud800surrogate\udfff here", "x" * 70 + " " + "y" * 130]


def reference_digests(texts: list[str]) -> np.ndarray:
    """Exact dedup by its definition: XXH3-128 of ``normalize(t)`` as UTF-8."""
    return np.frombuffer(b"".join(
        xxhash.xxh3_128_digest(normalize(t).encode("utf-8", "surrogatepass")) for t in texts),
        np.uint64).reshape(-1, 2)


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
    """``make install`` builds it; a test run without it would silently test the fallback twice."""
    assert native.available(), f"{native.LIBRARY} missing: run python -m datadiet.selectors.native build"


def test_normalize_kernel_equals_normalize(texts: list[str]) -> None:
    """Mode 0 (NFKC + fold in C) and mode 1 (already folded) write ``normalize(t)``; mode 2
    and the folds C cannot write in place come back as -1, for Python."""
    buf, offsets = hashing.utf8_layout(pa.array(texts))
    tables = exact._normalize_tables()
    mode = np.zeros(len(texts), np.uint8)
    mode[::7] = 2  # texts left to Python
    out, lengths = native.normalize(buf, offsets, mode, *tables, with_nfkc=True)
    assert (lengths[::7] == -1).all() and (lengths >= 0).sum() > len(texts) // 2
    for i in np.flatnonzero(lengths >= 0):
        got = out[offsets[i] : offsets[i] + lengths[i]].tobytes()
        assert got == normalize(texts[i]).encode("utf-8"), texts[i]
    folded = [exact._nfkc(t).casefold() for t in texts]
    buf, offsets = hashing.utf8_layout(folded)
    out, lengths = native.normalize(buf, offsets, np.ones(len(texts), np.uint8), *tables)
    assert (lengths >= 0).all()
    for i, text in enumerate(texts):
        got = out[offsets[i] : offsets[i] + lengths[i]].tobytes()
        assert got == normalize(text).encode("utf-8"), text


def test_exact_hashes_equal_on_every_path(texts: list[str], request: pytest.FixtureRequest) -> None:
    """The digests of C and of the fallback are those of :func:`normalize`, byte for byte."""
    with_c = exact.text_hashes(pa.array(texts), True)
    request.getfixturevalue("without_c")
    fallback = exact.text_hashes(texts, True)
    reference = reference_digests(texts)
    assert np.array_equal(with_c, reference)
    assert np.array_equal(fallback, reference)
    assert len(np.unique(with_c, axis=0)) < len(texts)  # the copies hash alike


def test_minhash_shard_equals_the_reference(texts: list[str], request: pytest.FixtureRequest) -> None:
    """The C shard (shingles -> signature -> band keys in one pass) and the NumPy fallback
    both give the reference's arrays, on real text and odd Unicode."""
    sample = texts[:300] + ODD_TEXTS + TRICKY
    want = minhash.minhash_shard_reference(sample, bands=16, rows=8)
    with_c = minhash.minhash_shard(sample, bands=16, rows=8)  # lone surrogates: not Arrow
    request.getfixturevalue("without_c")
    fallback = minhash.minhash_shard(sample, bands=16, rows=8)
    for got in (with_c, fallback):
        assert np.array_equal(got.signatures, want.signatures)
        assert np.array_equal(got.band_keys, want.band_keys)
        assert np.array_equal(got.has_words, want.has_words)
    assert not want.has_words.all() and want.has_words.sum() > 300


@pytest.mark.parametrize("verify", [True, False])
def test_minhash_reduce_equals_the_reference(texts: list[str], verify: bool,
                                             request: pytest.FixtureRequest) -> None:
    """LSH buckets, pair agreement and the fused C reduce (buckets, verification and
    union-find, no pair array) give the reference's pairs, labels and counts; so do the NumPy
    pieces of the fallback."""
    shard = minhash.minhash_shard(pa.array(texts), bands=16, rows=8)
    want = minhash.minhash_clusters_reference(shard.signatures, shard.band_keys,
                                              shard.has_words, threshold=0.8, verify=verify)
    assert want.merged_pairs >= 400
    n = len(texts)
    pairs = sorted(minhash.candidate_pairs_reference(shard.band_keys, shard.has_words,
                                                     all_pairs=verify))
    codes = np.sort(native.bucket_pairs(shard.band_keys, np.flatnonzero(shard.has_words),
                                        verify, minhash.MAX_BUCKET, n))
    assert [tuple(divmod(int(c), n)) for c in codes] == pairs
    pair_array = np.array(pairs, np.int64)
    agreement = [(shard.signatures[i] == shard.signatures[j]).mean() for i, j in pairs]
    assert np.array_equal(native.pair_jaccard(shard.signatures, pair_array), agreement)
    with_c = minhash.minhash_clusters(shard.signatures, shard.band_keys, shard.has_words,
                                      threshold=0.8, verify=verify)
    request.getfixturevalue("without_c")
    fallback = minhash.minhash_clusters(shard.signatures, shard.band_keys, shard.has_words,
                                        threshold=0.8, verify=verify)
    for got in (with_c, fallback):
        assert np.array_equal(got.labels, want.labels)
        assert (got.candidate_pairs, got.merged_pairs) == (want.candidate_pairs,
                                                           want.merged_pairs)


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


def test_kernel_nfkc_equals_unicodedata_for_every_code_point() -> None:
    """Every code point alone and between a letter and a combining accent (where composition
    and reordering happen) normalises in the C kernel exactly as in ``normalize()``: the NFKC
    classes built from ``unicodedata`` at install time leave nothing to chance."""
    assert native.nfkc_tables() is not None, "the NFKC classes were not built with the library"
    for name, fresh in unicode_tables.build_character_tables().items():  # the saved tables are current
        assert np.array_equal(native.unicode_table(name), fresh), name
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    for texts in (chars, [f"a{c}\u0301{c}b" for c in chars]):
        got = exact.text_hashes(pa.array(texts), True)
        want = reference_digests(texts)
        wrong = np.flatnonzero((got != want).any(axis=1))
        assert len(wrong) == 0, [hex(ord(texts[i][0 if len(texts[i]) == 1 else 1]))
                                 for i in wrong[:10]]
