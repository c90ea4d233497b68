"""Cluster-stratified sampling on real T0 rows from several tasks, embedded with MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.records import parse_fields, with_text
from datadiet.pipeline.steps import STEP_REGISTRY, RecordView, StepContext
from datadiet.selectors.cluster_sample import NOT_SAMPLED, ClusterSample, allocate
from datadiet.selectors.semdedup import assign_clusters, embedding_features, fit_kmeans

# a skewed mixture: many rows of one task, few of the others
TASKS = {"common_gen_topic_to_sentence.jsonl": 90, "sciq_Direct_Question_Closed_Book_.jsonl": 10,
         "cosmos_qa_only_question_answer.jsonl": 10, "trec_trec1.jsonl": 10}


@pytest.fixture(scope="module")
def ds(shared_data: Path) -> Dataset:
    rows = []
    for name, count in TASKS.items():
        for r in list(iter_jsonl(shared_data / "sft" / "t0_train" / name))[:count]:
            rows.append({**r, "task": name, "rank": float(len(rows) % 11)})
    return Dataset.from_list(rows)


def test_allocate_rules() -> None:
    sizes = np.array([90, 10, 10, 10])
    assert allocate(sizes, 20, "proportional").tolist() == [15, 2, 2, 1]
    assert allocate(sizes, 20, "balanced").tolist() == [5, 5, 5, 5]
    assert allocate(sizes, 50, "balanced").tolist() == [20, 10, 10, 10]
    assert allocate(sizes, 3, "balanced").sum() == 3
    assert allocate(sizes, 500, "proportional").tolist() == sizes.tolist()
    with pytest.raises(ValueError):
        allocate(sizes, 3, "uniform")


def test_balanced_sampling_evens_out_a_skewed_mixture(ds: Dataset) -> None:
    assert STEP_REGISTRY["cluster_sample"] is ClusterSample
    ctx = StepContext(show_progress=False)
    sel = ClusterSample(keep=20, n_clusters=4, strategy="balanced").select(ds, ctx)
    assert sel.n_kept == 20
    assert sel.stats["clusters_represented"] == 4
    assert sum(sel.stats["cluster_kept"]) == 20
    tasks = np.asarray(ds["task"])
    kept = {t: int((tasks[sel.keep] == t).sum()) for t in TASKS}
    # random sampling would keep ~13 CommonGen rows of 20; clustering spreads the budget
    assert kept["common_gen_topic_to_sentence.jsonl"] <= 10, kept
    assert sum(1 for v in kept.values() if v) >= 3, kept
    assert set(sel.reason_kind[~sel.keep]) == {NOT_SAMPLED}
    again = ClusterSample(keep=20, n_clusters=4, strategy="balanced").select(ds, ctx)
    np.testing.assert_array_equal(again.keep, sel.keep)  # seeded


def test_score_picks_each_clusters_best(ds: Dataset) -> None:
    ctx = StepContext(show_progress=False)
    sel = ClusterSample(keep=0.25, n_clusters=3, strategy="proportional", score="rank").select(ds, ctx)
    assert sel.n_kept == 30
    rendered = with_text(ds, parse_fields("prompt_completion"))
    emb = embedding_features(rendered.select_columns(["text"]).with_format("arrow")[:],
                              RecordView().booking_on(Ledger()))["embedding"]
    labels, _ = assign_clusters(emb, fit_kmeans(emb, 3, iters=20, seed=0))
    assert (labels[~sel.keep].astype(str) == sel.reason_detail[~sel.keep]).all()
    rank = np.asarray(ds["rank"])
    for c in range(3):
        kept, dropped = rank[(labels == c) & sel.keep], rank[(labels == c) & ~sel.keep]
        if len(kept) and len(dropped):
            assert kept.min() >= dropped.max(), c
    with pytest.raises(ValueError, match="no column 'nope'"):
        ClusterSample(keep=5, score="nope").select(ds, ctx)
