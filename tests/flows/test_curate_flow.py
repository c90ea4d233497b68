"""The curate flow on a real Prefect server: same output as the library, cached reruns, artifacts,
flat typed parameters that fail before any task, runs and log lines that say what happened, and
a sharded run on two Dask workers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from datadiet.flows import curate
from datadiet.flows.curation import CurateParams, normalised_spec
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.io import MANIFEST_FILE, REMOVED_FILE, read_removed
from datadiet.pipeline.steps import build_step
from tests.flows.helpers import artifacts_of, log_lines, runs_named, task_run_states

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
    params = dict(source=str(sample_corpus), out=str(tmp_path / "curated"), spec=SPEC,
                  storage=str(tmp_path / "storage"), tokenizer="bytes")
    first = curate(**params, return_state=True)
    assert first.is_completed(), first
    summary = first.result()
    expected = library_output(sample_corpus, tmp_path / "library")
    assert removed_and_kept(tmp_path / "curated") == expected
    assert summary["rows_in"] == len(expected[0]) + len(expected[1])
    assert summary["rows_out"] == len(expected[1])
    assert summary["tokens_out"] < summary["tokens_in"]

    run_id = first.state_details.flow_run_id
    states = task_run_states(run_id)
    assert states and all(s == "Completed" for s in states), states

    # The run, its tasks and its log say what ran, without the storage folder's paths.
    names = runs_named(run_id)
    assert names["flows"] == ["curate corpus.jsonl → curated/"]
    assert "curate corpus.jsonl → curated/" in names["tasks"]
    assert "count tokens of corpus.jsonl" in names["tasks"]
    assert not any(str(tmp_path) in name for name in names["tasks"]), names
    removed = {}
    for row in expected[0]:
        removed[row["step"]] = removed.get(row["step"], 0) + 1
    kept_line = (f"kept {summary['rows_out']} of {summary['rows_in']} rows; removed by "
                 f"exact_dedup {removed.get('exact_dedup', 0)}, quality {removed['quality']}, "
                 f"minhash_dedup {removed.get('minhash_dedup', 0)}")
    assert kept_line in log_lines(run_id)

    # The reports are a series of this dataset's runs; the table holds numbers, not text.
    artifacts = artifacts_of(run_id)
    report = artifacts["curate-corpus-jsonl-report"]
    assert report["type"] == "markdown"
    assert f"Kept **{summary['rows_out']:,} of {summary['rows_in']:,} rows" in report["data"]
    assert "data:image/png;base64," in report["data"]  # the plot is in the report
    assert (tmp_path / "curated" / "report" / "rows_per_step.png").stat().st_size > 1000
    table = artifacts["curate-corpus-jsonl-table"]
    data = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    rows = {row["measure"]: row for row in data}
    assert rows["rows"]["before"] == summary["rows_in"] and rows["rows"]["after"] == summary["rows_out"]
    assert rows["tokens"]["after"] == summary["tokens_out"]
    assert float(artifacts["curate-corpus-jsonl-progress"]["data"]) == 100.0

    again = curate(**params, return_state=True)
    assert again.is_completed()
    assert again.result() == summary
    rerun_states = task_run_states(again.state_details.flow_run_id)
    assert rerun_states and all(s == "Cached" for s in rerun_states), rerun_states
    # Artifacts are published by every run, cached or not.
    assert "curate-corpus-jsonl-report" in artifacts_of(again.state_details.flow_run_id)


def test_deleted_output_is_rebuilt_not_served_from_cache(
    prefect_api: str, sample_corpus: Path, tmp_path: Path
) -> None:
    import shutil

    params = dict(source=str(sample_corpus), out=str(tmp_path / "curated"), spec=SPEC,
                  storage=str(tmp_path / "storage"), tokenizer="bytes")
    curate(**params)
    shutil.rmtree(tmp_path / "curated")
    curate(**params)
    assert (tmp_path / "curated" / MANIFEST_FILE).exists()


def test_bad_parameters_fail_before_any_task(prefect_api: str, sample_corpus: Path,
                                             tmp_path: Path) -> None:
    def check(**parameters: object) -> None:
        CurateParams.of_call(curate.fn, parameters)

    with pytest.raises(ValidationError, match="entry 2.*unknown step 'qualty'"):
        check(source=str(sample_corpus), out=str(tmp_path / "o"),
              spec="- exact_dedup: {}\n- qualty: {}\n")
    with pytest.raises(ValidationError, match="no such file"):
        check(source=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "o"))
    with pytest.raises(ValidationError, match="workers"):
        check(source=str(sample_corpus), out=str(tmp_path / "o"), workers=0)
    with pytest.raises(ValueError, match="unexpected keyword argument 'params'"):
        check(source=str(sample_corpus), out=str(tmp_path / "o"), params={"overwrite": True})

    # Through Prefect (as a deployment run passes them): the run fails, no task ran.
    for bad in ({"spec": "- exact_dedup: {keep: 3}\n"}, {"workers": 0},
                {"source": str(tmp_path / "missing.jsonl")}):
        state = curate(**{"source": str(sample_corpus), "out": str(tmp_path / "o"), **bad},
                       return_state=True)
        assert state.is_failed(), bad
        assert task_run_states(state.state_details.flow_run_id) == []
    assert not (tmp_path / "o").exists()


def test_sharded_run_on_two_dask_workers_equals_the_single_process_run(
    prefect_api: str, sample_corpus: Path, tmp_path: Path
) -> None:
    params = dict(source=str(sample_corpus), out=str(tmp_path / "sharded"), spec=SPEC,
                  storage=str(tmp_path / "storage"), tokenizer="bytes", runner="dask", workers=2,
                  shards=3)
    state = curate(**params, return_state=True)
    assert state.is_completed(), state
    assert state.result()["shards"] == 3
    assert removed_and_kept(tmp_path / "sharded") == library_output(sample_corpus, tmp_path / "one")

    run_id = state.state_details.flow_run_id
    states = task_run_states(run_id)
    # 1 split + 3 shards x (exact hashes, quality decisions, MinHash signatures) + curate
    # (the reduces) + 2 token counts
    assert len(states) == 13 and all(s == "Completed" for s in states), states
    work = tmp_path / "storage" / "work"
    assert len(list(work.rglob("features-*.npz"))) == 6  # exact and MinHash, 3 shards each
    assert len(list(work.rglob("decisions-*.parquet"))) == 3  # quality
    # The progress is the parent run's, where the user looks, and it ends at 100%.
    progress = artifacts_of(run_id)["curate-corpus-jsonl-progress"]
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    assert progress["flow_run_id"] == str(run_id)
    names = runs_named(run_id)["tasks"]
    assert "quality on shard-00001-of-00003.parquet" in names, names
    # Readers fingerprint with `datasets`, whose dill disassembles functions with print():
    # none of that bytecode reaches the run's log, the run logger's lines do.
    logs = log_lines(run_id)
    assert any(line.startswith("kept ") for line in logs), logs
    assert not [line for line in logs if "LOAD_" in line or "RETURN_VALUE" in line], logs

    # The shard tasks are keyed by fingerprints, not by where they ran: the same sharded run on
    # the thread runner is served wholly from the cache.
    again = curate(**{**params, "runner": "local"}, return_state=True)
    assert again.result() == state.result()
    rerun = task_run_states(again.state_details.flow_run_id)
    assert len(rerun) == 13 and set(rerun) == {"Cached"}, rerun
