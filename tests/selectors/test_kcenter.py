"""Greedy k-center on real sentence embeddings (SST-2 and TREC) and on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.steps import STEP_REGISTRY, RecordView, StepContext
from datadiet.selectors.common import resolve_keep as resolve_count
from datadiet.selectors.kcenter import KCenterCoreset, greedy_k_center
from datadiet.selectors.semdedup import embedding_features
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA


def covering_radius(emb: np.ndarray, chosen: np.ndarray) -> float:
    """Max over all rows of the distance to the nearest chosen row (brute force)."""
    d = np.linalg.norm(emb[:, None, :] - emb[None, chosen, :], axis=-1)
    return float(d.min(axis=1).max())


@pytest.fixture(scope="module")
def sentences() -> Dataset:
    if not DATA.is_dir():
        pytest.skip("real-data kit not present")
    sst = (DATA / "icl" / "sst2" / "train.txt").read_text(encoding="utf-8").splitlines()[:200]
    trec = (DATA / "icl" / "trec" / "train.txt").read_text(encoding="utf-8").splitlines()[:100]
    texts = [line.split(" ", 1)[1] for line in sst + trec]
    return Dataset.from_dict({"id": [f"s{i}" for i in range(len(texts))], "text": texts})


@pytest.fixture(scope="module")
def ctx() -> StepContext:
    return StepContext(show_progress=False)


@pytest.fixture(scope="module")
def embeddings(sentences, ctx) -> np.ndarray:
    return np.asarray(embedding_features(sentences.select_columns(["text"]).with_format("arrow")[:],
                              RecordView().booking_on(Ledger()))["embedding"])


def test_registered() -> None:
    assert STEP_REGISTRY["kcenter"] is KCenterCoreset


@pytest.mark.slow
@pytest.mark.parametrize(("keep", "k"), [(30, 30), (0.1, 30), (0.25, 75)])
def test_picks_exactly_k(sentences, ctx, keep, k) -> None:
    sel = KCenterCoreset(keep=keep, seed=0).select(sentences, ctx)
    assert sel.n_kept == k
    assert sel.removed_by_kind() == {"kcenter:not-selected": len(sentences) - k}
    assert sel.stats["k"] == k


@pytest.mark.slow
def test_covers_better_than_random(sentences, ctx, embeddings) -> None:
    k = 30
    sel = KCenterCoreset(keep=k, seed=0).select(sentences, ctx)
    radius = covering_radius(embeddings, sel.kept_indices)
    assert radius == pytest.approx(sel.stats["radius"], abs=1e-4)
    rng = np.random.default_rng(0)
    random_radii = [
        covering_radius(embeddings, rng.choice(len(embeddings), k, replace=False))
        for _ in range(20)
    ]
    assert radius < min(random_radii)
    # the mean distance to the nearest kept row need not beat random (k-center optimises the
    # worst case, not the average), so only the radius is asserted


@pytest.mark.slow
def test_deterministic_with_seed(sentences, ctx) -> None:
    a = KCenterCoreset(keep=20, seed=3).select(sentences, ctx)
    b = KCenterCoreset(keep=20, seed=3).select(sentences, ctx)
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.scores, b.scores)
    firsts = {int(np.flatnonzero(np.isinf(KCenterCoreset(keep=20, seed=s).select(
        sentences, ctx).scores))[0]) for s in range(5)}
    assert len(firsts) > 1  # the seed does choose the first center


@pytest.mark.slow
def test_scores_reproduce_the_pick_order(sentences, ctx, embeddings) -> None:
    sel = KCenterCoreset(keep=25, seed=1).select(sentences, ctx)
    kept, dropped = sel.kept_indices, sel.removed_indices
    assert np.isinf(sel.scores[kept]).sum() == 1  # the first center
    assert sel.scores[kept].min() >= sel.scores[dropped].max()
    centers, pick_dist, cover = greedy_k_center(embeddings, 25, seed=1)
    assert np.all(np.diff(pick_dist[1:]) <= 0)  # greedy pick distances never increase
    np.testing.assert_allclose(sel.scores[dropped], cover[dropped])
    # a smaller budget is a prefix of a larger one
    small = KCenterCoreset(keep=10, seed=1).select(sentences, ctx)
    assert set(small.kept_indices) == set(centers[:10].tolist())


@pytest.mark.slow
def test_keep_everything_and_validation(sentences, ctx) -> None:
    sel = KCenterCoreset(keep=1.0).select(sentences, ctx)
    assert sel.n_kept == len(sentences)
    assert resolve_count(1, 10) == 1 and resolve_count(1.0, 10) == 10
    assert resolve_count(0.25, 10) == 3 and resolve_count(500, 10) == 10
    for bad in (0, 0.0, 1.5, -3, True):
        with pytest.raises(ValueError):
            KCenterCoreset(keep=bad)
    step = KCenterCoreset(keep=0.3, seed=7)
    assert type(step)(**step.params()).params() == {"keep": 0.3, "seed": 7}


def naive_k_center(emb: np.ndarray, k: int, first: int) -> list[int]:
    """Textbook greedy with a full distance matrix, as the reference."""
    d = np.linalg.norm(emb[:, None, :] - emb[None, :, :], axis=-1)
    chosen = [first]
    for _ in range(k - 1):
        nearest = d[:, chosen].min(axis=1)
        nearest[chosen] = -1
        chosen.append(int(np.argmax(nearest)))
    return chosen


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), frac=st.floats(0.01, 1.0), seed=st.integers(0, 1000),
       block=st.integers(1, 16))
def test_matches_naive_greedy(n, frac, seed, block) -> None:
    emb = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    k = max(1, int(frac * n))
    centers, pick_dist, cover = greedy_k_center(emb, k, seed=seed, block_rows=block)
    assert centers.tolist() == naive_k_center(emb, k, int(centers[0]))
    d = np.linalg.norm(emb[:, None, :] - emb[None, centers, :], axis=-1)
    np.testing.assert_allclose(cover, d.min(axis=1), atol=1e-4)
    for t in range(1, k):
        assert pick_dist[t] == pytest.approx(d[centers[t], :t].min(), abs=1e-4)
    assert np.isinf(pick_dist[0])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), distinct=st.integers(1, 6), seed=st.integers(0, 1000))
def test_exact_duplicates_never_picked_twice(n, distinct, seed) -> None:
    """With fewer distinct points than k, the greedy must still pick k different rows."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(-8, 8, size=(distinct, 3)).astype(np.float32)
    emb = pool[rng.integers(0, distinct, n)]
    centers, pick_dist, cover = greedy_k_center(emb, n, seed=seed)
    assert sorted(centers.tolist()) == list(range(n))
    assert np.all(cover == 0) and np.all(np.diff(pick_dist[1:]) <= 1e-6)


def test_memmap_input(tmp_path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((500, 8)).astype(np.float32)
    path = tmp_path / "e.npy"
    np.save(path, emb)
    mm = np.load(path, mmap_mode="r")
    a = greedy_k_center(emb, 40, seed=2)
    b = greedy_k_center(mm, 40, seed=2, block_rows=64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[2], b[2], atol=1e-5)
