"""Steps with a global pass (a first map, a combine in the driver, then the step's map reading
the combine's result): ``dsir`` and ``relevance`` stream in-process and run on a real Dask
``LocalCluster`` (2 worker processes on 127.0.0.1), with the rows, reasons, scores and stats
they had when they ran on an in-memory ``Dataset`` (the references below were computed with
that code, before the change, on the same inputs)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from datasets import Dataset

pytest.importorskip("distributed")

from datadiet.pipeline.curate import curate, curate_path  # noqa: E402
from datadiet.pipeline.executors.dask import DaskExecutor  # noqa: E402
from datadiet.pipeline.io import SpecError, iter_jsonl  # noqa: E402
from datadiet.pipeline.selection import Selection  # noqa: E402
from datadiet.pipeline.steps import GlobalPass, Step, StepContext  # noqa: E402
from tests.pipeline.test_executors import _assert_same_run, _model_spec_on_both  # noqa: E402


@pytest.fixture(scope="module")
def dask_executor() -> Iterator[DaskExecutor]:
    with DaskExecutor(workers=2, partition_rows=50) as executor:
        yield executor


def _sentences(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.split(" ", 1)[1].strip() for line in handle if line.strip()]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """120 SST-2 reviews among 240 WikiText lines, 30 exact and 30 near copies (420 rows), and
    200 SST-2 dev sentences as the DSIR target."""
    folder = tmp_path_factory.mktemp("dsir")
    rng = random.Random(0)
    wiki = [line.strip() for line in open(shared_data / "lm" / "wikitext2_valid.txt",
                                          encoding="utf-8")
            if line.strip() and not line.strip().startswith("=")]
    texts = rng.sample(_sentences(shared_data / "icl" / "sst2" / "train.txt"), 120)
    texts += rng.sample(wiki, 240)
    rng.shuffle(texts)
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    rows += [dict(r, id=f"copy-{r['id']}") for r in rows[:30]]
    rows += [dict(r, id=f"near-{r['id']}", text=r["text"] + " indeed") for r in rows[30:60]]
    source, target = folder / "pool.jsonl", folder / "target.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    target.write_text("".join(json.dumps({"text": t}) + "\n"
                              for t in _sentences(shared_data / "icl" / "sst2" / "dev.txt")[:200]),
                      encoding="utf-8")
    return source, target


#: spec -> (rows kept, sha256 of the kept ids joined by newlines, first 16 hex digits, and the
#: dsir step's stats), from the Dataset runner before DSIR became a map/reduce step
DSIR_REFERENCE = {
    "topk-between-dedups": (109, "a61938691c2d576d", {
        "k": 117, "target_ngrams": 6492, "raw_ngrams": 55308, "too_short": 23,
        "min_kept_score": -6.378949154904195, "mean_score_kept": 1.2600439980358749,
        "mean_score_all": -63.781079046169765}),
    "sample-first": (93, "852988075d2c26de", {
        "k": 100, "target_ngrams": 6492, "raw_ngrams": 58856, "too_short": 0,
        "min_kept_score": -3.0585686143198076, "mean_score_kept": 2.834332123695386,
        "mean_score_all": -62.83361262947752, "seed": 4}),
}


def _dsir_spec(name: str, target: Path) -> list[dict]:
    if name == "topk-between-dedups":
        return [{"exact_dedup": {}},
                {"dsir": {"target": str(target), "keep": 0.3, "min_tokens": 5}},
                {"minhash_dedup": {"threshold": 0.7}}]
    return [{"dsir": {"target": str(target), "keep": 100, "mode": "sample", "seed": 4}},
            {"exact_dedup": {}}]


@pytest.mark.parametrize("name", list(DSIR_REFERENCE))
def test_dsir_keeps_the_same_rows_on_both_executors_as_before(
        name: str, pool: tuple[Path, Path], dask_executor: DaskExecutor, tmp_path: Path) -> None:
    """DSIR with dedup steps before and after it, in 50-row Dask partitions: the raw pool's
    distribution is fitted over every partition (a partition alone would weigh its rows
    differently), so the kept rows, scores and stats equal the in-process run's and the
    earlier Dataset runner's; the Python API on a Dataset decides the same."""
    source, target = pool
    spec = _dsir_spec(name, target)
    local = curate_path(source, spec, tmp_path / "local", show_progress=False)
    on_dask = curate_path(source, spec, tmp_path / "dask", show_progress=False,
                          executor=dask_executor)
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")
    rows, digest, stats = DSIR_REFERENCE[name]
    kept_ids = local.dataset["id"]
    assert len(kept_ids) == rows
    assert hashlib.sha256("\n".join(kept_ids).encode()).hexdigest()[:16] == digest
    dsir = next(step for step in local.manifest.steps if step.name == "dsir")
    for key, value in stats.items():
        assert dsir.stats[key] == pytest.approx(value, rel=1e-9), key
    in_memory = curate(list(iter_jsonl(source)), spec)
    columns = ["id", "step", "reason", "dsir_score"]
    assert in_memory.removed.select(columns).equals(local.removed.select(columns))


#: kept ids, removed (id, reason) and the kept rows' relevance, from the Dataset runner before
#: relevance became a map/reduce step (SmolLM2-135M-Instruct, chat template)
RELEVANCE_KEPT = ["cg-1", "cg-3", "cg-4", "cg-6", "cg-7", "cg-8", "cg-9", "cg-10", "cg-11"]
RELEVANCE_REMOVED = [("copy-cg-3", "exact-duplicate-of:cg-3"), ("cg-0", "relevance:off-topic"),
                     ("cg-2", "relevance:below-budget"), ("cg-5", "relevance:below-budget"),
                     ("cg-12", "relevance:off-topic")]
RELEVANCE_SCORES = [0.683152, 0.661048, 0.621519, 1.393819, 1.330252, 0.676036, 1.382051,
                    0.790571, 1.576961]


@pytest.mark.slow
def test_relevance_keeps_the_same_rows_on_both_executors_as_before(
        shared_data: Path, dask_executor: DaskExecutor, tmp_path: Path) -> None:
    """Thirteen CommonGen rows (two with swapped answers) and a copy: after the exact dedup,
    each response is scored under two other rows' instructions, drawn over all rows though
    the Dask partitions hold four: the swapped pair is off-topic on both executors, with the
    rows, reasons, scores and stats of the earlier Dataset runner."""
    lines = list(iter_jsonl(shared_data / "sft" / "t0_train" /
                            "common_gen_topic_to_sentence.jsonl"))[:13]
    rows = [{"id": f"cg-{i}", "prompt": r["prompt"], "completion": r["completion"]}
            for i, r in enumerate(lines)]
    rows[0]["completion"], rows[12]["completion"] = rows[12]["completion"], rows[0]["completion"]
    rows.append(dict(rows[3], id="copy-cg-3"))
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = [{"exact_dedup": {}},
            {"relevance": {"contrast": 2, "keep": 9, "cache": False, "max_length": 128}}]
    local, on_dask = _model_spec_on_both(source, spec, tmp_path, dask_executor, 4)
    assert local.dataset["id"] == RELEVANCE_KEPT
    assert list(zip(local.removed.column("id").to_pylist(),
                    local.removed.column("reason").to_pylist(), strict=True)) == RELEVANCE_REMOVED
    for run in (local, on_dask):
        np.testing.assert_allclose(run.dataset["relevance_score"], RELEVANCE_SCORES, atol=2e-3)
    a, b = local.manifest.steps[1], on_dask.manifest.steps[1]
    # a pair that two partitions both hold is scored in each (no cache here): only the sum
    # of scored and cached pairs is the same
    counts = ("rows_scored", "cache_hits")
    assert {k: v for k, v in a.stats.items() if k not in counts} == \
        {k: v for k, v in b.stats.items() if k not in counts}
    assert sum(a.stats[k] for k in counts) == sum(b.stats[k] for k in counts) == 13 * 3
    assert a.stats["contrast"] == 2 and a.stats["chat_template"]
    assert b.tokens_scored >= a.tokens_scored > 0  # the workers' model work is booked
    assert "step:relevance/lm-scoring" in {s["name"] for s in on_dask.manifest.ledger["stages"]}


class _CountingPass(Step):
    """A global-pass step whose map can only be right if the combine saw every piece: it keeps
    the rows whose length is above the whole input's mean."""

    name = "above_mean_length"

    def __init__(self) -> None:
        pass

    def select(self, ds, ctx):  # noqa: ANN001, ANN201
        return self.select_by_map(ds, ctx)

    def global_pass(self) -> GlobalPass:
        return GlobalPass(self._lengths, self._mean)

    @staticmethod
    def _lengths(batch: pa.Table, view) -> tuple[int, int]:  # noqa: ANN001
        lengths = pc.utf8_length(view.texts(batch)).to_numpy(zero_copy_only=False)
        return int(lengths.sum()), len(lengths)

    @staticmethod
    def _mean(summaries: list[tuple[int, int]]) -> list[float]:
        mean = sum(s for s, _ in summaries) / max(1, sum(n for _, n in summaries))
        return [mean] * len(summaries)

    def record_features(self, batch, view) -> dict:  # noqa: ANN001
        lengths = pc.utf8_length(view.texts(batch)).to_numpy(zero_copy_only=False)
        mean = np.inf if view.combined is None else view.combined
        return {"above": np.asarray(lengths > mean)}

    def select_from_features(self, ds, ctx, features) -> Selection:  # noqa: ANN001
        keep = np.asarray(features["above"], bool)
        return Selection.from_mask(keep, np.full(len(keep), "short", object))


def test_a_global_pass_sees_every_partition_on_both_executors(
        pool: tuple[Path, Path], dask_executor: DaskExecutor, tmp_path: Path) -> None:
    """The mechanism itself, through a step that is nothing but it, after a dedup (so the
    pass runs on the survivors, in 50-row partitions): the rows kept are those above the mean
    length of all survivors, as numpy computes it over the whole column."""
    source = pool[0]
    spec = [{"exact_dedup": {}}, _CountingPass()]
    local = curate_path(source, spec, tmp_path / "local", show_progress=False)
    on_dask = curate_path(source, spec, tmp_path / "dask", show_progress=False,
                          executor=dask_executor)
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")
    duplicates = set(local.removed.column("id").to_pylist()[: local.manifest.steps[0].rows_in
                                                            - local.manifest.steps[0].rows_out])
    survivors = [r["text"] for r in iter_jsonl(source) if r["id"] not in duplicates]
    lengths = np.array([len(t) for t in survivors])
    assert 0 < local.rows_kept == int((lengths > lengths.mean()).sum()) < len(survivors)
    # the Python API on a Dataset, in 7-row batches, runs the same passes
    in_memory = _CountingPass().select_by_map(Dataset.from_dict({"text": survivors}),
                                              StepContext(show_progress=False, batch_size=7))
    assert in_memory.n_kept == local.rows_kept

def test_a_step_without_a_map_is_refused_on_files_before_reading(
        pool: tuple[Path, Path], tmp_path: Path) -> None:
    """No spec falls back to an in-memory Dataset: a plug-in step with only ``select`` is a
    clear error naming it, before any row is read or any output written."""

    class SelectOnly(Step):
        name = "select_only"

        def select(self, ds, ctx):  # noqa: ANN001, ANN201
            return Selection.keep_all(len(ds))

    with pytest.raises(SpecError, match="select_only have no map/reduce split"):
        curate_path(pool[0], [{"exact_dedup": {}}, SelectOnly()], tmp_path / "out",
                    show_progress=False)
    assert not (tmp_path / "out").exists()
