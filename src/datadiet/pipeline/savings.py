"""The measured saving: train the same model on two datasets with one budget, compare FLOPs.

The headline number is ``train_flops_ratio``: the FLOPs the baseline run (full data) needed to
reach its own final eval loss, divided by the FLOPs the candidate run (curated data) needed to
reach that same loss *plus what the curation cost* (the curation manifest's ledger). Selection
is not free, and a ratio that leaves the selection out flatters it (Yin & Rush 2025).

Why per seed: each seed is one paired comparison (the same initial weights and the same data
order rule on both sides); the spread over seeds says how far the ratio can be trusted. A
candidate that never reaches the target within the budget gets no ratio for that seed, and the
summary says so instead of inventing one.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datadiet.pipeline.stages.training import TrainConfig, flops_to_reach, train

__all__ = ["eval_curve", "flops_savings", "load_run_report", "spread", "train_arms"]


def train_arms(
    arms: dict[str, Any],
    config: TrainConfig,
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    eval_dataset: Any = None,
    on_run: Callable[[str, int, dict], None] | None = None,
) -> dict[str, list[dict]]:
    """Train ``config`` once per (arm, seed) and return each arm's reports in seed order.

    ``arms`` maps a name to its training data (a ``Dataset`` or a path that
    :func:`~datadiet.pipeline.stages.training.load_text_dataset` reads). Every run gets the same
    config but its own seed, so the arms differ only in their data. Runs are written to
    ``out/<arm>/seed-<seed>/`` (report, ledger and loss curve). ``on_run(arm, seed, report)`` is
    called after each run (progress displays).
    """
    out = Path(out)
    reports: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm, data in arms.items():
            run_config = config.model_copy(update={"seed": int(seed)})
            started = time.perf_counter()
            report = train(run_config, out / arm / f"seed-{seed}", dataset=data,
                           eval_dataset=eval_dataset, resume=False)
            report["wall_seconds"] = time.perf_counter() - started
            report["run_dir"] = str(out / arm / f"seed-{seed}")
            reports[arm].append(report)
            if on_run is not None:
                on_run(arm, int(seed), report)
    return reports


def load_run_report(path: str | os.PathLike) -> dict:
    """A run's ``report.json`` (or its folder), with ``run_dir`` set to the folder it is in."""
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    report = json.loads(path.read_text(encoding="utf-8"))
    report["run_dir"] = str(path.parent)
    return report


def eval_curve(report: dict) -> list[tuple[float, float]]:
    """``(cumulative training FLOPs, eval loss)`` at every evaluation of a run."""
    return [(float(e["flops"]), float(e["eval_loss"])) for e in report["flops_at_eval_loss"]]


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the values that exist, and how many."""
    real = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(real) if real else None,
        "std": statistics.stdev(real) if len(real) > 1 else (0.0 if real else None),
        "min": min(real) if real else None,
        "max": max(real) if real else None,
        "n": len(real),
        "of": len(values),
    }


def flops_savings(baseline: Sequence[dict], candidate: Sequence[dict],
                  candidate_extra_flops: float = 0.0) -> dict[str, Any]:
    """Per seed: the FLOPs each side needed to reach the baseline's final loss, and their ratio.

    ``baseline[i]`` and ``candidate[i]`` are runs with the same seed. The target of a pair is
    the baseline run's final eval loss; ``candidate_extra_flops`` (curation) is added to the
    candidate's side. ``ratio`` is ``None`` for a seed where the candidate never reached the
    target. ``ratio_without_extra`` shows what leaving the curation out would have claimed.
    """
    if len(baseline) != len(candidate):
        raise ValueError(f"{len(baseline)} baseline runs but {len(candidate)} candidate runs")
    pairs = []
    for base, cand in zip(baseline, candidate, strict=True):
        target = base.get("final_eval_loss")
        if target is None:
            raise ValueError(f"baseline run {base.get('run_dir', '?')} has no eval loss")
        base_flops = flops_to_reach(base, target)
        cand_flops = flops_to_reach(cand, target)
        paid = None if cand_flops is None else cand_flops + candidate_extra_flops
        pairs.append({
            "seed": base["config"]["seed"],
            "target_eval_loss": target,
            "baseline_final_eval_loss": target,
            "candidate_final_eval_loss": cand.get("final_eval_loss"),
            "baseline_flops": base_flops,
            "candidate_flops": cand_flops,
            "candidate_flops_with_extra": paid,
            "ratio": (base_flops / paid) if base_flops and paid else None,
            "ratio_without_extra": (base_flops / cand_flops) if base_flops and cand_flops else None,
        })
    ratios = [p["ratio"] for p in pairs]
    return {
        "extra_flops": candidate_extra_flops,
        "budget_flops": baseline[0]["flops_per_step"] * baseline[0]["total_steps"] if baseline else None,
        "per_seed": pairs,
        "ratio": spread(ratios),
        "ratio_without_extra": spread([p["ratio_without_extra"] for p in pairs]),
        "baseline_final_loss": spread([p["baseline_final_eval_loss"] for p in pairs]),
        "candidate_final_loss": spread([p["candidate_final_eval_loss"] for p in pairs]),
        "reached": sum(r is not None for r in ratios),
    }
