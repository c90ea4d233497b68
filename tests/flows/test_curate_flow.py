"""The curate flow on a real Prefect server: same output as the library, cached reruns, artifacts,
typed parameters that fail before any task, and a sharded run on two Dask workers."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from datadiet.flows.curate import CurateParams, ScaleOut, curate, normalised_spec
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.io import MANIFEST_FILE, REMOVED_FILE, read_removed
from datadiet.pipeline.steps import build_step
from tests.flows.helpers import artifacts_of, task_run_states

# Quality sits between the two dedups, so the order of steps changes what is kept: a sharded
# run that decided quality out of order would keep different duplicates.
SPEC = """\
- exact_dedup: {}
- quality: {min_alpha_word_ratio: 0.6}
- minhash_dedup: {threshold: 0.7, num_perm: 64, ngram: 5}
"""


def removed_and_kept(out: Path) -> tuple[list[dict], list[str]]:
    removed = read_removed(out / REMOVED_FILE).to_pylist()
    kept = []
    for shard in sorted(out.glob("*.parquet")):
        kept += pq.read_table(shard, columns=["id"]).column("id").to_pylist()
    return removed, kept


def library_output(corpus: Path, out: Path) -> tuple[list[dict], list[str]]:
    steps = [build_step(*next(iter(e.items()))) for e in normalised_spec(SPEC)]
    curate_path(corpus, steps, out, show_progress=False)
    return removed_and_kept(out)


def test_curate_flow_equals_the_library_and_a_rerun_runs_no_task(
    prefect_api: str, sample_corpus: Path, tmp_path: Path
) -> None:
    params = CurateParams(source=str(sample_corpus), out=str(tmp_path / "curated"), spec=SPEC,
                          storage=str(tmp_path / "storage"), tokenizer="bytes")
    first = curate(params, return_state=True)
    assert first.is_completed(), first
    summary = first.result()
    expected = library_output(sample_corpus, tmp_path / "library")
    assert removed_and_kept(tmp_path / "curated") == expected
    assert summary["rows_in"] == len(expected[0]) + len(expected[1])
    assert summary["rows_out"] == len(expected[1])
    assert summary["tokens_out"] < summary["tokens_in"]

    states = task_run_states(first.state_details.flow_run_id)
    assert states and all(s == "Completed" for s in states), states

    artifacts = artifacts_of(first.state_details.flow_run_id)
    report = artifacts["datadiet-curate-report"]
    assert report["type"] == "markdown"
    assert f"Kept **{summary['rows_out']:,} of {summary['rows_in']:,} rows" in report["data"]
    assert "data:image/png;base64," in report["data"]  # the plot is in the report
    assert (tmp_path / "curated" / "report" / "rows_per_step.png").stat().st_size > 1000
    table = artifacts["datadiet-curate-table"]
    assert table["type"] == "table" and "tokens" in str(table["data"])

    again = curate(params, return_state=True)
    assert again.is_completed()
    assert again.result() == summary
    rerun_states = task_run_states(again.state_details.flow_run_id)
    assert rerun_states and all(s == "Cached" for s in rerun_states), rerun_states
    # Artifacts are published by every run, cached or not.
    assert "datadiet-curate-report" in artifacts_of(again.state_details.flow_run_id)


def test_deleted_output_is_rebuilt_not_served_from_cache(
    prefect_api: str, sample_corpus: Path, tmp_path: Path
) -> None:
    import shutil

    params = CurateParams(source=str(sample_corpus), out=str(tmp_path / "curated"), spec=SPEC,
                          storage=str(tmp_path / "storage"), tokenizer="bytes")
    curate(params)
    shutil.rmtree(tmp_path / "curated")
    curate(params)
    assert (tmp_path / "curated" / MANIFEST_FILE).exists()


def test_bad_parameters_fail_before_any_task(prefect_api: str, sample_corpus: Path,
                                             tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="entry 2.*unknown step 'qualty'"):
        CurateParams(source=str(sample_corpus), out=str(tmp_path / "o"),
                     spec="- exact_dedup: {}\n- qualty: {}\n")
    with pytest.raises(ValidationError, match="no such file"):
        CurateParams(source=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "o"))
    with pytest.raises(ValidationError, match="workers"):
        CurateParams(source=str(sample_corpus), out=str(tmp_path / "o"), scale={"workers": 0})

    # Through Prefect (as a deployment run would pass them): the run fails, no task ran.
    state = curate(params={"source": str(sample_corpus), "out": str(tmp_path / "o"),
                           "spec": "- exact_dedup: {keep: 3}\n"}, return_state=True)
    assert state.is_failed()
    assert task_run_states(state.state_details.flow_run_id) == []
    assert not (tmp_path / "o").exists()


def test_sharded_run_on_two_dask_workers_equals_the_single_process_run(
    prefect_api: str, sample_corpus: Path, tmp_path: Path
) -> None:
    params = CurateParams(source=str(sample_corpus), out=str(tmp_path / "sharded"), spec=SPEC,
                          storage=str(tmp_path / "storage"), tokenizer="bytes",
                          scale=ScaleOut(runner="dask", workers=2, shards=3))
    state = curate(params, return_state=True)
    assert state.is_completed(), state
    assert state.result()["shards"] == 3
    assert removed_and_kept(tmp_path / "sharded") == library_output(sample_corpus, tmp_path / "one")

    states = task_run_states(state.state_details.flow_run_id)
    # 1 split + 3 shards x (exact hashes, quality decisions, MinHash signatures) + curate
    # (the reduces) + 2 token counts
    assert len(states) == 13 and all(s == "Completed" for s in states), states
    work = tmp_path / "storage" / "work"
    assert len(list(work.rglob("features-*.npz"))) == 6  # exact and MinHash, 3 shards each
    assert len(list(work.rglob("decisions-*.parquet"))) == 3  # quality
    progress = artifacts_of(state.state_details.flow_run_id)["datadiet-curate-shards"]
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0

    # The shard tasks are keyed by fingerprints, not by where they ran: the same sharded run on
    # the thread runner is served wholly from the cache.
    again = curate(params.model_copy(update={"scale": ScaleOut(runner="local", shards=3)}),
                   return_state=True)
    assert again.result() == state.result()
    rerun = task_run_states(again.state_details.flow_run_id)
    assert len(rerun) == 13 and set(rerun) == {"Cached"}, rerun
