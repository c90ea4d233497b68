"""Near-dedup (``minhash_dedup``) on real paragraphs with planted near duplicates.

What must hold: planted copies (exact, re-cased, a word changed, a word inserted, truncated) are
removed with a reason naming the row they were folded into; distinct paragraphs survive; the
result does not depend on input order (same partition into clusters) and running the step on
its own output removes nothing; the C kernels and the NumPy fallback agree bit for bit with the
obviously-correct reference built on ``datadiet.pipeline.text.words``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datadiet.experiments.corpus import gutenberg_paragraphs
from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.pipeline.text import words
from datadiet.selectors import minhash as mh
from datadiet.selectors import native
from datadiet.selectors.minhash import (
    MinHashDedup,
    band_keys,
    band_keys_reference,
    candidate_pairs_from_keys,
    candidate_pairs_reference,
    connected_components,
    estimated_jaccard,
    lsh_candidate_pairs,
    minhash_clusters,
    minhash_shard,
    minhash_signatures,
    optimal_bands_rows,
    shingle_hashes,
    shingle_hashes_reference,
    signatures_from_hashes,
    signatures_reference,
)

HYPO = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def shingles(text: str, n: int = 5) -> set[str]:
    w = words(text)
    starts = range(len(w) - n + 1) if len(w) >= n else range(min(len(w), 1))
    return {" ".join(w[i : i + n]) for i in starts}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def ctx(**kw) -> StepContext:
    return StepContext(show_progress=False, **kw)


def dataset(texts: list[str], ids: list[str] | None = None) -> Dataset:
    ids = ids if ids is not None else [f"d{i}" for i in range(len(texts))]
    return Dataset.from_dict({"id": ids, "text": texts})


@pytest.fixture(scope="module")
def paragraphs(wiki_paragraphs: list[str], shared_data: Path) -> list[str]:
    """~200 real, mutually dissimilar paragraphs (checked: pairwise Jaccard < 0.3)."""
    doyle = gutenberg_paragraphs(shared_data / "lm" / "doyle_adventures.txt", min_words=60)
    pool = wiki_paragraphs[:140] + doyle[:80]
    sets = [shingles(p) for p in pool]
    kept: list[int] = []
    for i, s in enumerate(sets):
        if all(len(s & sets[j]) / len(s | sets[j]) < 0.3 for j in kept):
            kept.append(i)
    assert len(kept) >= 180
    return [pool[i] for i in kept]


def edits(text: str, rng: random.Random) -> dict[str, str]:
    """Near copies of ``text``: above the 0.8 threshold for long texts (asserted by callers)."""
    w = text.split()
    sub = list(w)
    sub[len(w) // 2] = "zebra"
    ins = list(w)
    ins.insert(len(w) // 3, "meanwhile")
    return {
        "exact": text,
        "recased": "  ".join(x.upper() if rng.random() < 0.3 else x for x in w) + " !",
        "substituted": " ".join(sub),
        "inserted": " ".join(ins),
        "truncated": " ".join(w[: len(w) - max(1, len(w) // 25)]),
    }


# ----------------------------------------------------------------------------------------------
# the step on planted duplicates
# ----------------------------------------------------------------------------------------------


def test_planted_near_duplicates_are_found(paragraphs: list[str]) -> None:
    rng = random.Random(0)
    base = paragraphs[:150]
    texts = list(base)
    ids = [f"p{i}" for i in range(len(base))]
    expected: dict[str, str] = {}
    long_ones = [i for i, p in enumerate(base) if len(p.split()) >= 100][:25]
    for i in long_ones:
        for kind, text in edits(base[i], rng).items():
            assert jaccard(base[i], text) >= 0.87, kind
            texts.append(text)
            ids.append(f"p{i}-{kind}")
            expected[ids[-1]] = f"p{i}"
    # shuffle copies among the originals, keeping every original before its copies
    order = list(range(len(base))) + rng.sample(range(len(base), len(texts)), len(texts) - len(base))
    ds = dataset([texts[k] for k in order], [ids[k] for k in order])

    sel = MinHashDedup().select(ds, ctx(batch_size=64))
    removed = {ds[int(r)]["id"]: sel.reason(int(r)) for r in sel.removed_indices}
    assert removed == {k: f"minhash-duplicate-of:{v}" for k, v in expected.items()}
    assert sel.n_kept == len(base)
    assert sel.removed_by_kind() == {"minhash-duplicate-of": len(expected)}
    assert sel.stats["duplicate_clusters"] == len(long_ones) == 25


def test_earliest_row_is_the_representative(paragraphs: list[str]) -> None:
    """A copy that comes first is kept and the original points to it."""
    p = paragraphs[0]
    w = p.split()
    variant = " ".join(w[:-2])
    ds = dataset([paragraphs[1], variant, paragraphs[2], p], ["a", "variant", "b", "original"])
    sel = MinHashDedup().select(ds, ctx())
    assert sel.keep.tolist() == [True, True, True, False]
    assert sel.reason(3) == "minhash-duplicate-of:variant"


def test_dissimilar_texts_are_kept(paragraphs: list[str]) -> None:
    ds = dataset(paragraphs)
    sel = MinHashDedup().select(ds, ctx())
    assert sel.n_kept == len(paragraphs)


def test_threshold_separates(paragraphs: list[str]) -> None:
    """A copy at Jaccard ~0.6 is a duplicate at threshold 0.5 but not at 0.8."""
    p = paragraphs[3].split()
    half = " ".join(p[: int(len(p) * 0.62)])
    j = jaccard(paragraphs[3], half)
    assert 0.55 < j < 0.7
    ds = dataset([paragraphs[3], half])
    assert MinHashDedup(threshold=0.8).select(ds, ctx()).n_kept == 2
    assert MinHashDedup(threshold=0.5).select(ds, ctx()).n_kept == 1


def test_empty_dataset() -> None:
    sel = MinHashDedup().select(dataset([]), ctx())
    assert sel.n_rows == 0 and sel.n_kept == 0


def test_texts_shorter_than_ngram() -> None:
    """Fewer words than ``ngram``: one shingle of all the words; no words: never clustered."""
    texts = ["Hello world", "hello, WORLD!", "hello there", "", "!!!", "...", "one two three four"]
    sel = MinHashDedup().select(dataset(texts), ctx())
    assert sel.keep.tolist() == [True, False, True, True, True, True, True]
    assert sel.reason(1) == "minhash-duplicate-of:d0"


def test_missing_id_column_falls_back_to_row_index(paragraphs: list[str]) -> None:
    ds = Dataset.from_dict({"text": [paragraphs[0], paragraphs[1], paragraphs[0]]})
    sel = MinHashDedup().select(ds, ctx())
    assert sel.reason(2) == "minhash-duplicate-of:0"


def test_custom_columns(paragraphs: list[str]) -> None:
    ds = Dataset.from_dict({"key": ["x", "y"], "body": [paragraphs[0], paragraphs[0] + " fin"]})
    sel = MinHashDedup().select(ds, ctx(text_field="body", id_field="key"))
    assert sel.reason(1) == "minhash-duplicate-of:x"


def test_step_protocol() -> None:
    step = MinHashDedup(threshold=0.7, num_perm=64, bands=8, rows=8, verify=False)
    assert STEP_REGISTRY["minhash_dedup"] is MinHashDedup
    assert type(step)(**step.params()).params() == step.params()
    assert step.banding() == (8, 8)
    with pytest.raises(ValueError):
        MinHashDedup(threshold=1.5)
    with pytest.raises(ValueError):
        MinHashDedup(bands=4)
    with pytest.raises(ValueError):
        MinHashDedup(num_perm=16, bands=4, rows=5)


def test_on_disk_path_gives_the_same_result_and_cleans_up(
    paragraphs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(4)
    texts = paragraphs[:30] + [v for p in paragraphs[:4] for v in edits(p, rng).values()]
    ds = dataset(texts)
    in_memory = MinHashDedup().select(ds, ctx(work_dir=tmp_path))
    assert not (tmp_path / "minhash").exists()
    monkeypatch.setattr(mh, "IN_MEMORY_BYTES", 0)
    on_disk = MinHashDedup().select(ds, ctx(work_dir=tmp_path, batch_size=7))
    assert list((tmp_path / "minhash").iterdir()) == []
    assert np.array_equal(in_memory.keep, on_disk.keep)
    assert in_memory.reason_detail.tolist() == on_disk.reason_detail.tolist()


def test_numpy_fallback_gives_the_same_selection(
    paragraphs: list[str], request: pytest.FixtureRequest
) -> None:
    rng = random.Random(1)
    texts = paragraphs[:40] + [v for p in paragraphs[:5] for v in edits(p, rng).values()]
    ds = dataset(texts)
    fast = MinHashDedup().select(ds, ctx())
    request.getfixturevalue("without_c")
    slow = MinHashDedup().select(ds, ctx())
    assert (~fast.keep).sum() >= 5
    assert np.array_equal(fast.keep, slow.keep)
    assert fast.reason_detail.tolist() == slow.reason_detail.tolist()


# ----------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------


@st.composite
def corpora(draw: st.DrawFn, paragraphs: list[str]) -> list[str]:
    """A few real paragraphs plus random near copies of some of them."""
    idx = draw(st.lists(st.integers(0, len(paragraphs) - 1), min_size=1, max_size=12, unique=True))
    texts = [paragraphs[i] for i in idx]
    for _ in range(draw(st.integers(0, 10))):
        src = draw(st.sampled_from(texts)).split()
        if not src:  # an earlier edit may have deleted every word
            continue
        op = draw(st.sampled_from(["sub", "ins", "del", "cut", "short"]))
        pos = draw(st.integers(0, len(src) - 1))
        if op == "sub":
            src[pos] = draw(st.sampled_from(["alpha", "beta", "gamma"]))
        elif op == "ins":
            src.insert(pos, "inserted")
        elif op == "del":
            del src[pos]
        elif op == "cut":
            src = src[: max(1, len(src) - draw(st.integers(1, 8)))]
        else:
            src = src[: draw(st.integers(1, 6))]
        texts.append(" ".join(src))
    return texts


def partition(texts: list[str], sel) -> set[frozenset[int]]:  # noqa: ANN001
    """Clusters as sets of positions in ``texts`` (via the ids ``d<i>`` of the reasons)."""
    label = {}
    for i in range(len(texts)):
        label[i] = int(sel.reason_detail[i][1:]) if not sel.keep[i] else i
    groups: dict[int, set[int]] = {}
    for i, lab in label.items():
        groups.setdefault(lab, set()).add(i)
    return {frozenset(g) for g in groups.values()}


@HYPO
@given(data=st.data())
def test_property_idempotent(paragraphs: list[str], data: st.DataObject) -> None:
    texts = data.draw(corpora(paragraphs))
    step = MinHashDedup(verify=data.draw(st.booleans()))
    first = step.select(dataset(texts), ctx())
    kept = [texts[i] for i in first.kept_indices]
    again = step.select(dataset(kept), ctx())
    assert again.n_kept == len(kept)


@HYPO
@given(data=st.data())
def test_property_order_does_not_change_clusters(paragraphs: list[str], data: st.DataObject) -> None:
    texts = data.draw(corpora(paragraphs))
    perm = data.draw(st.permutations(range(len(texts))))
    step = MinHashDedup(verify=data.draw(st.booleans()))
    a = partition(texts, step.select(dataset(texts), ctx()))
    shuffled = [texts[p] for p in perm]
    b = partition(shuffled, step.select(dataset(shuffled), ctx()))
    assert a == {frozenset(perm[i] for i in g) for g in b}


# ----------------------------------------------------------------------------------------------
# the pieces
# ----------------------------------------------------------------------------------------------


TRICKY = [
    "", "!!!", "x", "Hello", "Hello world", "a b c d e", "a b c d e f",
    "İstanbul İSTANBUL", "ΣΑΣ ΟΔΟΣ σας", "Straße STRASSE ǅemal", "naïve café_x 123 ×y ½",
    "tab\tsep\nnew line\r\nwin", "emoji 😀 in 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 text", "Ⅻ roman Ⅰ numerals",
    "ABC" * 50, "K Kelvin sign, Å angstrom", "lone \ud800surrogate\udfff here",
    "x" * 70 + " " + "y" * 130,
]


def test_tokeniser_matches_words_on_tricky_text() -> None:
    ref = shingle_hashes_reference(TRICKY, ngram=3)
    got = shingle_hashes(TRICKY, ngram=3)
    assert np.array_equal(got[0], ref[0])
    assert np.array_equal(got[1], ref[1])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40), max_size=6),
    st.integers(1, 4),
)
def test_property_tokeniser_matches_words(texts: list[str], ngram: int) -> None:
    ref = shingle_hashes_reference(texts, ngram=ngram)
    got = shingle_hashes(texts, ngram=ngram)
    assert np.array_equal(got[0], ref[0])
    assert np.array_equal(got[1], ref[1])


def test_signatures_c_and_numpy_equal_the_reference(paragraphs: list[str]) -> None:
    texts = paragraphs[:60] + ["", "tiny", "x" * 20000 + " long tail"]
    h, off = shingle_hashes(texts)
    fast = signatures_from_hashes(h, off, num_perm=96, seed=3)  # C, where built
    numpy = mh._signatures_numpy(h, off, 96, 3)
    slow = signatures_reference(h, off, 96, 3)
    assert fast.dtype == np.uint32 and fast.shape == (len(texts), 96)
    assert np.array_equal(fast, slow) and np.array_equal(numpy, slow)
    assert (fast[len(texts) - 3] == 0xFFFFFFFF).all()  # empty text: the empty set's signature


def test_long_text_spanning_blocks() -> None:
    """A text longer than the NumPy kernel's block is folded over its segments correctly."""
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    off = np.array([0, 3, 9000, 9000, 10_000])
    sig = mh._signatures_numpy(h, off, 16, 0)
    a, b = mh._perm_constants(0, 16)
    for d in range(4):
        seg = h[off[d] : off[d + 1]]
        want = (
            (a[:, None] * seg[None, :] + b[:, None]).min(axis=1)
            if len(seg)
            else np.full(16, 0xFFFFFFFF)
        )
        assert np.array_equal(sig[d], want)


def test_estimates_track_true_jaccard(paragraphs: list[str]) -> None:
    """Unbiased, with the error MinHash theory predicts (sqrt(J(1-J)/num_perm))."""
    rng = random.Random(2)
    a, b, true = [], [], []
    for p in paragraphs[:120]:
        w = p.split()
        for _ in range(rng.randint(1, 12)):
            w[rng.randrange(len(w))] = rng.choice(["ox", "elm", "tin"])
        a.append(p)
        b.append(" ".join(w))
        true.append(jaccard(p, b[-1]))
    sig = minhash_signatures(a + b, num_perm=128)
    n = len(a)
    est = estimated_jaccard(sig, np.stack([np.arange(n), np.arange(n) + n], axis=1))
    err = est - np.array(true)
    theory = np.sqrt(np.mean(np.array(true) * (1 - np.array(true)) / 128))
    assert abs(err.mean()) < 0.015
    assert np.sqrt(np.mean(err**2)) < 1.4 * theory


def test_seed_and_shards_are_consistent(paragraphs: list[str]) -> None:
    """Signatures depend only on the text and the parameters: shards can be computed apart."""
    whole = minhash_signatures(paragraphs[:30], seed=7)
    parts = np.concatenate([minhash_signatures(paragraphs[:11], seed=7),
                            minhash_signatures(paragraphs[11:30], seed=7)])
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, minhash_signatures(paragraphs[:30], seed=8))


def test_lsh_pairs_star_and_all_give_same_components(paragraphs: list[str]) -> None:
    rng = random.Random(3)
    texts = paragraphs[:30] + [v for p in paragraphs[:6] for v in edits(p, rng).values()]
    sig = minhash_signatures(texts)
    star = lsh_candidate_pairs(sig, 16, 8)
    full = lsh_candidate_pairs(sig, 16, 8, all_pairs=True)
    assert set(map(tuple, star.tolist())) <= set(map(tuple, full.tolist()))
    assert (star[:, 0] < star[:, 1]).all()
    n = len(texts)
    assert np.array_equal(connected_components(n, star), connected_components(n, full))
    keys = band_keys(sig, 16, 8)
    assert keys.shape == (n, 16) and keys.dtype == np.uint64
    # a bucket bigger than max_bucket falls back to a star
    same = np.zeros((10, 2), np.uint64)
    assert len(candidate_pairs_from_keys(same, all_pairs=True, max_bucket=4)) == 9
    assert len(candidate_pairs_from_keys(same, all_pairs=True, max_bucket=16)) == 45


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), min_size=0, max_size=60),
    st.booleans(),
    st.integers(2, 6),
)
def test_property_bucket_pairs_c_and_numpy_equal_the_reference(
    rows: list[list[int]], all_pairs: bool, max_bucket: int
) -> None:
    """Hash-table grouping (C), sort grouping (NumPy) and the dict of lists (reference) give
    the same candidate pairs."""
    keys = np.array(rows, np.uint64).reshape(-1, 3)
    valid = np.array([sum(r) != 1 for r in rows], bool)
    want = sorted(candidate_pairs_reference(keys, valid, all_pairs=all_pairs,
                                            max_bucket=max_bucket))
    fast = candidate_pairs_from_keys(keys, valid, all_pairs=all_pairs, max_bucket=max_bucket)
    previous = os.environ.get("DATADIET_NATIVE")
    os.environ["DATADIET_NATIVE"] = "0"
    native._library.cache_clear()
    try:
        slow = candidate_pairs_from_keys(keys, valid, all_pairs=all_pairs, max_bucket=max_bucket)
    finally:
        if previous is None:
            del os.environ["DATADIET_NATIVE"]
        else:
            os.environ["DATADIET_NATIVE"] = previous
        native._library.cache_clear()
    assert fast.tolist() == slow.tolist() == [list(p) for p in want]


def test_band_keys_equal_the_reference(paragraphs: list[str]) -> None:
    sig = minhash_signatures(paragraphs[:50])
    assert np.array_equal(band_keys(sig, 16, 8, seed=5), band_keys_reference(sig, 16, 8, seed=5))


def reference_components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in pairs:
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return [find(i) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                                             max_size=80))
))
def test_property_connected_components(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, pairs = case
    got = connected_components(n, np.array(pairs, np.int64).reshape(-1, 2))
    assert got.tolist() == reference_components(n, pairs)


def test_connected_components_long_chain() -> None:
    n = 5000
    pairs = np.stack([np.arange(1, n), np.arange(n - 1)], axis=1)[::-1]
    assert (connected_components(n, pairs) == 0).all()


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_optimal_bands_rows_agrees_with_datasketch(threshold: float) -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    assert optimal_bands_rows(threshold, 128) == lsh._optimal_param(threshold, 128, 0.5, 0.5)


# ----------------------------------------------------------------------------------------------
# map over shards, reduce once
# ----------------------------------------------------------------------------------------------


def test_shard_function_equals_the_separate_pieces(
    paragraphs: list[str], request: pytest.FixtureRequest
) -> None:
    """The fused parallel kernel computes exactly signatures + band keys + has-words."""
    texts = [*paragraphs[:60], "", "!!", "one", "İstanbul ΣΑΣ straße " * 3, "x" * 5000]
    shard = minhash_shard(texts, bands=16, rows=8, num_perm=128, ngram=5, seed=7)
    sig = minhash_signatures(texts, num_perm=128, ngram=5, seed=7)
    assert np.array_equal(shard.signatures, sig)
    assert np.array_equal(shard.band_keys, band_keys(sig, 16, 8, seed=7))
    assert shard.has_words.tolist() == [bool(words(t)) for t in texts]
    request.getfixturevalue("without_c")
    slow = minhash_shard(texts, bands=16, rows=8, num_perm=128, ngram=5, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(shard, slow, strict=True))


def test_shards_mapped_separately_reduce_to_the_single_process_result(
    paragraphs: list[str],
) -> None:
    """What a Dask map over shards does: per-shard arrays, concatenated, one reduce."""
    rng = random.Random(11)
    texts = paragraphs[:50] + [v for p in paragraphs[:8] for v in edits(p, rng).values()]
    rng.shuffle(texts)
    step = MinHashDedup()
    bands, rows = step.banding()
    shards = [minhash_shard(texts[s : s + 13], bands=bands, rows=rows) for s in range(0, 90, 13)]
    shards.append(minhash_shard(texts[91:], bands=bands, rows=rows))
    shards.insert(-1, minhash_shard(texts[90:91], bands=bands, rows=rows))
    merged = [np.concatenate(parts) for parts in zip(*shards, strict=True)]
    clusters = minhash_clusters(*merged, threshold=step.threshold)
    whole = step.select(dataset(texts), ctx())
    assert (clusters.labels == np.arange(len(texts))).tolist() == whole.keep.tolist()
    assert clusters.candidate_pairs == whole.stats["candidate_pairs"]
    assert clusters.merged_pairs == whole.stats["merged_pairs"] > 0


def test_shard_function_reads_arrow_columns_in_place(paragraphs: list[str]) -> None:
    texts = [*paragraphs[:40], "ΣΊΣΥΦΟΣ İstanbul ΟΔΟΣ " * 4, "", "!!"]
    expected = minhash_shard(texts, bands=16, rows=8)
    for column in (pa.array(texts), pa.array(["x", *texts]).slice(1),
                   pa.chunked_array([texts[:9], texts[9:]])):
        got = minhash_shard(column, bands=16, rows=8)
        assert all(np.array_equal(x, y) for x, y in zip(got, expected, strict=True))
