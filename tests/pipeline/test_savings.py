"""The measured-saving arithmetic: FLOPs to reach the baseline's final loss, curation included."""

from __future__ import annotations

import math

import pytest

from datadiet.pipeline.savings import flops_savings, spread


def _report(seed: int, losses: list[float], flops_per_eval: float = 10.0) -> dict:
    evals = [{"eval_loss": loss, "flops": i * flops_per_eval, "tokens": i, "step": i}
             for i, loss in enumerate(losses)]
    return {"config": {"seed": seed}, "final_eval_loss": losses[-1], "flops_at_eval_loss": evals,
            "flops_per_step": flops_per_eval, "total_steps": len(losses) - 1}


def test_ratio_counts_the_curation_flops_on_the_candidate_side() -> None:
    full = [_report(0, [5.0, 4.0, 3.5, 3.2, 3.0])]  # reaches 3.0 at 40 FLOPs
    curated = [_report(0, [5.0, 3.4, 3.0, 2.8, 2.7])]  # reaches 3.0 at 20 FLOPs
    out = flops_savings(full, curated, candidate_extra_flops=5.0)
    pair = out["per_seed"][0]
    assert pair["target_eval_loss"] == 3.0
    assert pair["baseline_flops"] == 40.0 and pair["candidate_flops"] == 20.0
    assert pair["ratio"] == pytest.approx(40.0 / 25.0)
    assert pair["ratio_without_extra"] == pytest.approx(2.0)
    assert out["reached"] == 1 and out["budget_flops"] == 40.0


def test_a_seed_that_never_reaches_the_target_gets_no_ratio() -> None:
    full = [_report(0, [5.0, 3.0]), _report(1, [5.0, 3.0])]
    curated = [_report(0, [5.0, 2.9]), _report(1, [5.0, 3.1])]
    out = flops_savings(full, curated)
    assert [p["ratio"] for p in out["per_seed"]] == [1.0, None]
    assert out["ratio"]["n"] == 1 and out["ratio"]["of"] == 2
    assert out["reached"] == 1


def test_unpaired_runs_are_an_error() -> None:
    with pytest.raises(ValueError, match="2 baseline runs but 1"):
        flops_savings([_report(0, [1.0]), _report(1, [1.0])], [_report(0, [1.0])])


def test_spread_ignores_missing_values() -> None:
    s = spread([2.0, None, 4.0, math.nan])
    assert s["mean"] == 3.0 and s["n"] == 2 and s["of"] == 4
    assert s["std"] == pytest.approx(math.sqrt(2.0))
    assert spread([None])["mean"] is None
