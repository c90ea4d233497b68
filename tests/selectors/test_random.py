"""The random baseline: exact budgets, seeded draws, a reason for every removed row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.common import resolve_keep
from datadiet.selectors.random_baseline import RandomSelect


@pytest.fixture(scope="module")
def sst2(shared_data: Path) -> Dataset:
    with open(shared_data / "icl" / "sst2" / "dev.txt", encoding="utf-8") as f:
        texts = [ln.split(" ", 1)[1].strip() for ln in f if ln.strip()]
    return Dataset.from_dict({"id": [f"sst2-{i}" for i in range(len(texts))], "text": texts})


CTX = StepContext(show_progress=False)


def test_registered_and_params_round_trip() -> None:
    assert STEP_REGISTRY["random"] is RandomSelect
    step = RandomSelect(keep=0.3, seed=7)
    assert step.params() == {"keep": 0.3, "seed": 7}
    assert RandomSelect(**step.params()).params() == step.params()


@pytest.mark.parametrize("keep", [0, 1, 100, 871, 872, 5000])
def test_keeps_exactly_the_count(sst2: Dataset, keep: int) -> None:
    sel = RandomSelect(keep=keep, seed=0).select(sst2, CTX)
    assert sel.n_kept == min(keep, len(sst2))
    assert set(sel.removed_by_kind()) <= {"random:not-sampled"}
    assert sel.stats["k"] == sel.n_kept


@pytest.mark.parametrize("keep, expected", [(0.0, 0), (0.1, 87), (0.5, 436), (1.0, 872)])
def test_fraction_rounds_to_nearest_row(sst2: Dataset, keep: float, expected: int) -> None:
    assert RandomSelect(keep=keep).select(sst2, CTX).n_kept == expected


def test_seeded_and_reproducible(sst2: Dataset) -> None:
    a = RandomSelect(keep=100, seed=3).select(sst2, CTX)
    b = RandomSelect(keep=100, seed=3).select(sst2, CTX)
    c = RandomSelect(keep=100, seed=4).select(sst2, CTX)
    np.testing.assert_array_equal(a.keep, b.keep)
    assert not np.array_equal(a.keep, c.keep)


def test_seed_none_uses_the_run_seed(sst2: Dataset) -> None:
    run = RandomSelect(keep=50).select(sst2, StepContext(seed=11, show_progress=False))
    explicit = RandomSelect(keep=50, seed=11).select(sst2, CTX)
    np.testing.assert_array_equal(run.keep, explicit.keep)
    assert run.stats["seed"] == 11


def test_inclusion_is_uniform(sst2: Dataset) -> None:
    """Every row is equally likely: over 400 draws of 10%, per-row inclusion counts look
    binomial(400, 0.1) (mean 40, sd 6), not skewed towards the start or end of the data."""
    n, k, draws = len(sst2), 87, 400
    hits = np.zeros(n)
    for seed in range(draws):
        hits += RandomSelect(keep=k, seed=seed).select(sst2, CTX).keep
    p = k / n
    assert abs(hits.mean() - draws * p) < 1e-9  # exact: every draw keeps k rows
    assert abs(hits[: n // 2].mean() - hits[n // 2 :].mean()) < 3
    assert 0.7 < hits.std() / np.sqrt(draws * p * (1 - p)) < 1.3


@pytest.mark.parametrize("bad", [-1, 1.5, -0.1, True, "10", None])
def test_bad_keep_fails_when_built(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        RandomSelect(keep=bad)  # type: ignore[arg-type]


def test_resolve_keep_type_decides() -> None:
    assert resolve_keep(1, 10) == 1
    assert resolve_keep(1.0, 10) == 10
    assert resolve_keep(np.int64(3), 10) == 3
    assert resolve_keep(20, 10) == 10


def test_empty_dataset() -> None:
    empty = Dataset.from_dict({"id": [], "text": []})
    assert RandomSelect(keep=0.5).select(empty, CTX).n_rows == 0
