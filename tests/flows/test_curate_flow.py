"""The curate flow on a real Prefect server: same output as the library, cached reruns, artifacts,
flat typed parameters that fail before any task, runs and log lines that say what happened, and
the same output on a real loopback Dask cluster (the library's DaskExecutor), fine-tuning specs
included, with nothing but the cache written under the flow's storage."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from distributed import Client, LocalCluster
from pydantic import ValidationError

from datadiet.cli import main as datadiet_cli
from datadiet.flows import curate
from datadiet.flows.curation import CurateParams, ScaleOut, normalised_spec
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
    with pytest.raises(ValidationError, match="(?s)worker_memory.*'lots' is not a size"):
        check(source=str(sample_corpus), out=str(tmp_path / "o"), worker_memory="lots")
    with pytest.raises(ValidationError, match="fields: unknown field 'question'"):
        check(source=str(sample_corpus), out=str(tmp_path / "o"),
              spec="fields: {question: q}\nsteps: [exact_dedup]\n")
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


# -- on Dask -------------------------------------------------------------------------------

# A fine-tuning spec of model-free steps, as examples/sft.yaml reads GSM8K-style records:
# before the one engine only text maps ran on the Dask workers.
SFT_SPEC = """\
fields: {prompt: question, completion: answer}
steps:
  - exact_dedup: {}
  - response_rules: {}
  - longest: {keep: 0.6}
"""
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """A running two-worker cluster on loopback, as a user's scheduler (started once here)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def kept_rows(out: Path) -> list[dict]:
    """The kept rows as a user reads the folder: ``datasets.load_dataset`` through its card."""
    return load_dataset(str(out), split="train").to_list()


def cli_output(corpus: Path, spec: Path, out: Path) -> list[dict]:
    """``datadiet curate`` in this process (the local executor)."""
    assert datadiet_cli(["curate", str(corpus), "--spec", str(spec), "--out", str(out),
                         "--quiet"]) == 0
    return kept_rows(out)


def only_the_cache(storage: Path) -> None:
    """Under the flow's storage: task results, and no work folder, shards or features."""
    assert not (storage / "work").exists()
    assert [p for p in storage.rglob("*") if p.suffix in (".parquet", ".npz", ".arrow")] == []
    assert {p.relative_to(storage).parts[0] for p in storage.iterdir()} == {"results"}


def test_dask_runner_keeps_what_the_local_runner_and_the_cli_keep(
    prefect_api: str, sample_corpus: Path, tmp_path: Path
) -> None:
    """No address: the flow starts a LocalCluster of `workers` processes on 127.0.0.1."""
    storage = tmp_path / "storage"
    params = dict(source=str(sample_corpus), spec=SPEC, storage=str(storage), tokenizer="bytes")
    state = curate(**params, out=str(tmp_path / "dask"), runner="dask", workers=2, shards=3,
                   return_state=True)
    assert state.is_completed(), state
    local = curate(**params, out=str(tmp_path / "local"))
    (tmp_path / "spec.yaml").write_text(SPEC)
    expected = cli_output(sample_corpus, tmp_path / "spec.yaml", tmp_path / "cli")
    assert kept_rows(tmp_path / "dask") == kept_rows(tmp_path / "local") == expected
    assert removed_and_kept(tmp_path / "dask") == removed_and_kept(tmp_path / "cli")
    summary = state.result()
    assert summary["rows_out"] == local["rows_out"] == len(expected) < summary["rows_in"]
    assert summary["tokens_out"] == local["tokens_out"]
    only_the_cache(storage)

    # One flow run, its three named tasks (no subflow, no shard tasks), the progress at 100%.
    run_id = state.state_details.flow_run_id
    names = runs_named(run_id)
    assert names["flows"] == ["curate corpus.jsonl → dask/"]
    assert sorted(names["tasks"]) == ["count tokens of corpus.jsonl", "count tokens of dask",
                                      "curate corpus.jsonl → dask/"], names
    assert set(task_run_states(run_id)) == {"Completed"}
    artifacts = artifacts_of(run_id)
    progress = artifacts["curate-corpus-jsonl-progress"]
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    assert "Ran on Dask, a local cluster of 2 workers" in artifacts["curate-corpus-jsonl-report"]["data"]
    logs = log_lines(run_id)
    assert any(line.startswith("kept ") for line in logs), logs
    assert any("shards=3 is ignored" in line for line in logs), logs
    # Readers fingerprint with `datasets`, whose dill disassembles functions with print():
    # none of that bytecode reaches the run's log.
    assert not [line for line in logs if "LOAD_" in line or "RETURN_VALUE" in line], logs

    # The cache is keyed by what is computed, not where: the same run in one process is
    # served wholly from it.
    again = curate(**params, out=str(tmp_path / "dask"), return_state=True)
    assert again.result() == summary
    assert set(task_run_states(again.state_details.flow_run_id)) == {"Cached"}


def test_finetuning_spec_runs_through_the_flow_on_a_running_cluster(
    prefect_api: str, dask_address: str, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    result = curate(source=str(EXAMPLES / "sft.jsonl"), out=str(tmp_path / "dask"), spec=SFT_SPEC,
                    storage=str(storage), tokenizer="bytes", runner="dask",
                    dask_address=dask_address)
    (tmp_path / "sft.yaml").write_text(SFT_SPEC)
    expected = cli_output(EXAMPLES / "sft.jsonl", tmp_path / "sft.yaml", tmp_path / "cli")
    kept = kept_rows(tmp_path / "dask")
    assert kept == expected and 0 < len(kept) < result["rows_in"]
    assert set(kept[0]) >= {"question", "answer"}  # the input's columns, not a rendering
    removed = read_removed(tmp_path / "dask" / REMOVED_FILE).to_pylist()
    assert {row["step"] for row in removed} == {"exact_dedup", "response_rules", "longest"}
    only_the_cache(storage)


def test_workers_run_library_code_only(prefect_api: str, dask_address: str, sample_corpus: Path,
                                       tmp_path: Path) -> None:
    """The workers run the steps' maps and reduces, never a Prefect task: after a flow run on
    them they have imported neither Prefect (so no Prefect API of their own), nor the flows,
    nor torch (no step here needs a model)."""
    curate(source=str(sample_corpus), out=str(tmp_path / "out"), spec=SPEC, tokenizer="bytes",
           storage=str(tmp_path / "storage"), runner="dask", dask_address=dask_address)
    # A lambda is shipped by value; a function of this module would make the workers import
    # the module, and with it the flows.
    watched = ("prefect", "torch", "transformers", "datadiet.flows")
    imported_by_worker = lambda: sorted(  # noqa: E731
        name for name in sys.modules if name.startswith(watched))
    with Client(dask_address) as client:
        imported = client.run(imported_by_worker)
    assert len(imported) == 2 and all(mods == [] for mods in imported.values()), imported


@pytest.mark.parametrize("runner", ["local", "dask"])
def test_progress_moves_after_the_read_and_each_reduce(
    runner: str, dask_address: str, sample_corpus: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    scale = ScaleOut(runner=runner, address=dask_address if runner == "dask" else None)
    with scale.executor() as executor:
        curate_path(sample_corpus, normalised_spec(SPEC), tmp_path / "out",
                    show_progress=False, executor=executor,
                    on_progress=lambda done, phases: seen.append((done, phases)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the read, then three reduces
