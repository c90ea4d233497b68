"""DEITA's score-first diverse walk on real T0 rows embedded with the real MiniLM embedder.

CommonGen rows under one template repeat the same concepts with near-identical sentences, so the
similarity threshold has real near-copies to reject. The walk is checked against the plain
definition (a Python double loop, fine at this size) and its invariants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.curate import curate
from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.records import parse_fields, with_text
from datadiet.pipeline.steps import STEP_REGISTRY, RecordView, StepContext
from datadiet.selectors.deita import BELOW_BUDGET, NO_SCORE, TOO_SIMILAR, Deita, diverse_by_score
from datadiet.selectors.semdedup import embedding_features


@pytest.fixture(scope="module")
def ds(shared_data: Path) -> Dataset:
    rows = list(iter_jsonl(shared_data / "sft" / "t0_train" / "common_gen_topic_to_sentence.jsonl"))
    rows = rows[:120]
    for i, r in enumerate(rows):
        r["id"] = f"cg{i}"
        r["quality"] = float(len(r["completion"]) % 17)  # a numeric column with many ties
    rows[7]["quality"] = float("nan")
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def ctx() -> StepContext:
    return StepContext(show_progress=False)


def reference_walk(emb: np.ndarray, order: np.ndarray, k: int, threshold: float) -> list[int]:
    taken: list[int] = []
    for row in order:
        if len(taken) == k:
            break
        if all(float(emb[row] @ emb[t]) <= threshold for t in taken):
            taken.append(int(row))
    return taken


def test_registered_and_validated() -> None:
    assert STEP_REGISTRY["deita"] is Deita
    for bad in ({"keep": -1}, {"threshold": 1.5}, {"score": ""}, {"threshold": True}):
        with pytest.raises(ValueError):
            Deita(**bad)


@pytest.mark.parametrize("block", [1, 7, 256])
def test_walk_matches_the_definition(ds: Dataset, ctx: StepContext, block: int) -> None:
    rendered = with_text(ds, parse_fields("prompt_completion"))
    emb = embedding_features(rendered.select_columns(["text"]).with_format("arrow")[:],
                              RecordView().booking_on(Ledger()))["embedding"]
    order = np.argsort(-np.nan_to_num(np.asarray(ds["quality"]), nan=-1), kind="stable")
    for k, threshold in ((30, 0.9), (60, 0.7), (200, 0.8)):
        taken, nearest, sim, examined = diverse_by_score(emb, order, k, threshold, block=block)
        assert taken.tolist() == reference_walk(emb, order, k, threshold)
        rejected = [r for r in order[:examined] if r not in set(taken.tolist())]
        assert all(sim[r] > threshold and nearest[r] in set(taken.tolist()) for r in rejected)
        pairwise = emb[taken] @ emb[taken].T
        np.fill_diagonal(pairwise, -1)
        assert pairwise.max() <= threshold + 1e-6


def test_step_on_t0_rows(ds: Dataset, ctx: StepContext) -> None:
    sel = Deita(keep=40, score="quality", threshold=0.85).select(ds, ctx)
    assert sel.n_kept == 40 and sel.stats["budget_met"]
    kinds = sel.removed_by_kind()
    assert kinds[TOO_SIMILAR] > 0 and kinds[NO_SCORE] == 1 and kinds[BELOW_BUDGET] > 0
    quality = np.asarray(ds["quality"])
    examined = np.isfinite(sel.scores) | sel.keep
    # score-first: every row never examined scores no better than every row examined
    assert np.nanmin(quality[examined]) >= np.nanmax(quality[sel.reason_kind == BELOW_BUDGET])
    similar = np.flatnonzero(sel.reason_kind == TOO_SIMILAR)
    ids = np.asarray(ds["id"])
    kept_ids = set(ids[sel.keep])
    assert all(sel.reason_detail[i] in kept_ids for i in similar)
    with pytest.raises(ValueError, match="no column 'ifd_score'"):
        Deita().select(ds, ctx)


def test_after_a_scoring_step_in_curate(ds: Dataset, ctx: StepContext) -> None:
    """deita reads the score column an earlier step wrote (here k-center's distances)."""
    result = curate(ds, [{"kcenter": {"keep": 80}},
                         {"deita": {"keep": 0.5, "score": "kcenter_score", "threshold": 0.9}}],
                    ctx=ctx)
    assert len(result.dataset) == 40
    # k-center's first pick scores inf: the best score, taken first, not "no score"
    assert np.isinf(np.asarray(result.dataset["kcenter_score"])).sum() == 1
    assert {"kcenter_score", "deita_score"} <= set(result.dataset.column_names)
