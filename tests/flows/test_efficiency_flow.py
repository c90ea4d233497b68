"""The efficiency chain: curate -> train on full vs curated -> its own before/after report."""

from __future__ import annotations

from pathlib import Path

from datadiet.flows import TrainBudget, efficiency
from tests.flows.helpers import artifacts_of, log_lines, run_ids, runs_named


def test_efficiency_chains_curation_and_training(prefect_api: str, sample_corpus: Path,
                                                 shared_data: Path, tmp_path: Path) -> None:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text((shared_data / "lm" / "wikitext2_test.txt").read_text()[:20_000])
    state = efficiency(
        source=str(sample_corpus), out=str(tmp_path / "run"), eval_data=str(held_out),
        tokenizer="bytes", storage=str(tmp_path / "storage"),
        budget=TrainBudget(tokenizer="bytes", seq_len=64, batch_size=4, max_steps=6,
                           eval_every=3, max_eval_blocks=4, num_threads=1), return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["curate"]["rows_out"] < result["curate"]["rows_in"]
    assert result["train"]["runs"]["candidate"]["report"].startswith(str(tmp_path / "run" / "training"))
    assert result["prompts"] is None  # no pool given: the prompt stage is skipped

    flow_run = state.state_details.flow_run_id
    assert len(run_ids(flow_run)) == 3  # the chain and its two subflow runs
    assert sorted(runs_named(flow_run)["flows"]) == [
        "curate corpus.jsonl → curated/", "efficiency of corpus.jsonl → run/",
        "train on corpus.jsonl vs curated → training/"]
    artifacts = artifacts_of(flow_run)
    assert {"curate-corpus-jsonl-report", "train-curated-report",
            "efficiency-corpus-jsonl-report"} <= set(artifacts)
    assert artifacts["efficiency-corpus-jsonl-progress"]["data"] == 100.0
    summary = artifacts["efficiency-corpus-jsonl-report"]["data"]
    assert f"| corpus rows | {result['curate']['rows_in']:,} | {result['curate']['rows_out']:,} |" in summary

    logs = log_lines(flow_run)  # the stages, the curation's and the training's outcome
    assert any(line.startswith("kept ") for line in logs), logs
    assert any(line.startswith("candidate (curated): final eval loss") for line in logs), logs
