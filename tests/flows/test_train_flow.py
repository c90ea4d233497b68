"""train_and_measure: two real (tiny) training runs, one comparison, the loss-vs-FLOPs report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from datadiet.flows import TrainBudget, TrainMeasureParams, train_and_measure
from tests.flows.helpers import artifacts_of, task_run_states

BUDGET = TrainBudget(model="tiny", tokenizer="bytes", seq_len=64, batch_size=4, max_steps=8,
                     lr=3e-3, warmup_steps=2, eval_every=4, max_eval_blocks=8, num_threads=1)


@pytest.fixture(scope="module")
def datasets(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shakespeare speeches: all of them, the longer half, and held-out Doyle text."""
    root = tmp_path_factory.mktemp("train-data")
    text = (shared_data / "lm" / "tinyshakespeare.txt").read_text()[:40_000]
    speeches = [p.strip() for p in text.split("\n\n") if p.strip()]
    longer = sorted(speeches, key=len, reverse=True)[: len(speeches) // 2]
    held_out = (shared_data / "lm" / "doyle_adventures.txt").read_text()[5_000:15_000]
    files = {"full": speeches, "half": longer, "eval": held_out.split("\n\n")}
    paths = {}
    for name, rows in files.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": r}) + "\n" for r in rows if r.strip()))
    return paths


def test_train_and_measure_compares_two_runs_and_caches(prefect_api: str, datasets: dict,
                                                        tmp_path: Path) -> None:
    params = dict(baseline=str(datasets["full"]), candidate=str(datasets["half"]),
                  eval_data=str(datasets["eval"]), out=str(tmp_path / "runs"), budget=BUDGET,
                  storage=str(tmp_path / "storage"))
    state = train_and_measure(**params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    saved = json.loads((tmp_path / "runs" / "comparison.json").read_text())
    assert saved["comparison"] == result["comparison"]
    for label in ("baseline", "candidate"):
        report = json.loads((tmp_path / "runs" / label / "report.json").read_text())
        assert report["steps"] == 8 and [e["step"] for e in report["evals"]] == [0, 4, 8]
        assert report["config"]["eval_data"] == str(datasets["eval"])
    # Same budget: the same number of training tokens and FLOPs on both sides.
    assert result["runs"]["baseline"]["train_flops"] == result["runs"]["candidate"]["train_flops"]
    assert result["comparison"]["target_eval_loss"] > 0

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert "Loss vs training FLOPs" in artifacts["train-half-jsonl-report"]["data"]
    assert "data:image/png;base64," in artifacts["train-half-jsonl-report"]["data"]
    assert (tmp_path / "runs" / "report" / "loss_vs_flops.png").stat().st_size > 1000
    assert "final eval loss" in str(artifacts["train-half-jsonl-table"]["data"])

    again = train_and_measure(**params, return_state=True)
    assert again.result()["comparison"] == result["comparison"]
    assert set(task_run_states(again.state_details.flow_run_id)) == {"Cached"}


def test_budget_is_validated_before_training(datasets: dict, tmp_path: Path) -> None:
    files = dict(baseline=str(datasets["full"]), candidate=str(datasets["half"]),
                 eval_data=str(datasets["eval"]), out=str(tmp_path))
    with pytest.raises(ValidationError, match="enormous"):
        TrainMeasureParams.of_call(train_and_measure.fn,
                                   {**files, "budget": TrainBudget(model="enormous")})
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainMeasureParams.of_call(train_and_measure.fn,
                                   {**files, "budget": {"extra": {"learning_rate": 1.0}}})
