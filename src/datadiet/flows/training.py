"""The ``train_and_measure`` flow: one model, two datasets, one budget, one comparison.

Each dataset trains the same model from the same seed for the same number of tokens through
:func:`datadiet.pipeline.stages.training.train`, evaluated on the same held-out set; the two
reports (ledgers, loss curves, FLOPs at each eval loss) are then compared with
:func:`~datadiet.pipeline.stages.training.compare_runs` — how many FLOPs each needed to reach
the same eval loss. The flow only wires these calls into cached tasks and publishes the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datadiet.flows.common import (
    FlowParams,
    cached_task,
    flow_run_namer,
    run_checked,
    series_key,
    stored,
)
from datadiet.flows.report import (
    before_after_rows,
    image_section,
    line_plot,
    markdown_table,
    publish,
)
from datadiet.pipeline.io import atomic_write_json, source_fingerprint
from datadiet.pipeline.stages.training import TrainConfig, compare_runs, train


class TrainBudget(BaseModel):
    """The model and the budget both runs share (a subset of ``TrainConfig``; ``extra`` holds
    any other ``TrainConfig`` field)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", description="Model preset (tiny, small, smollm2-135m).")
    tokenizer: str | None = Field(None, description="Tokenizer: `bytes`, a folder or id; "
                                  "empty = SmolLM2's.")
    seq_len: int = Field(128, ge=2, description="Tokens per training sequence.")
    batch_size: int = Field(8, ge=1)
    max_steps: int = Field(100, ge=1, description="Optimizer steps (unless max_tokens is set).")
    max_tokens: int | None = Field(None, ge=1, description="Training tokens; wins over max_steps.")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    eval_every: int = Field(20, ge=1, description="Steps between evaluations (the points of "
                            "the loss-vs-FLOPs curve).")
    max_eval_blocks: int = Field(32, ge=1)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    num_threads: int | None = Field(None, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="Other TrainConfig fields.")

    def config(self, data: str, eval_data: str) -> TrainConfig:
        fields = self.model_dump(exclude={"extra"})
        return TrainConfig(**{**fields, **self.extra, "data": data, "eval_data": eval_data,
                              "save_model": False, "checkpoint_every": 0})


class TrainMeasureParams(FlowParams):
    """The ``train_and_measure`` flow's parameters, checked together: the three datasets exist,
    the budget builds a training config. The flow builds one from its arguments before any task
    runs."""

    baseline: str
    candidate: str
    eval_data: str
    out: str
    budget: TrainBudget | None
    text_field: str
    target_loss: Annotated[float, Field(gt=0)] | None

    @field_validator("baseline", "candidate", "eval_data")
    @classmethod
    def _exists(cls, value: str) -> str:
        source_fingerprint(value)
        return value

    @model_validator(mode="after")
    def _budget_builds(self) -> TrainMeasureParams:
        self.train_budget.config(self.baseline, self.eval_data)  # unknown preset, bad extra...
        return self

    @property
    def train_budget(self) -> TrainBudget:
        return self.budget or TrainBudget()


@cached_task(task_run_name="train on {label}")
def train_run(label: str, config: dict, data_fingerprint: str, eval_fingerprint: str,
              out: str) -> dict:
    """Train from scratch (a stale checkpoint is never resumed) and return the report's path."""
    report = train(TrainConfig(**config), out, resume=False)
    return {"report": str(Path(out) / "report.json"), "final_eval_loss": report["final_eval_loss"],
            "train_flops": report["steps"] * report["flops_per_step"],
            "train_tokens": report["steps"] * report["tokens_per_step"],
            "ledger_flops": report["ledger"]["total"]["flops"]}


def _load(path: str) -> dict:
    import json

    return json.loads(Path(path).read_text())


@flow(name="datadiet-train-and-measure", flow_run_name=flow_run_namer(
    "train on {baseline} vs {candidate} → {out}/"), log_prints=False, validate_parameters=True)
def train_and_measure(
    baseline: str,
    candidate: str,
    eval_data: str,
    out: str,
    budget: TrainBudget | None = None,
    text_field: str = "text",
    target_loss: Annotated[float, Field(gt=0)] | None = None,
    storage: str | None = None,
) -> dict:
    """Train the same model on both datasets with the same budget; compare FLOPs to a loss.

    Args:
        baseline: The reference dataset (e.g. the full corpus): a file, folder, or a
            `datadiet curate` output folder.
        candidate: The dataset to compare (e.g. the curated corpus).
        eval_data: Held-out text both runs are evaluated on (losses on different held-out sets
            do not compare).
        out: Folder for both runs and comparison.json.
        budget: The model and budget both runs share; empty = the defaults.
        text_field: The field holding each row's text.
        target_loss: Eval loss to reach; empty = the worse of the two final losses.
        storage: Folder for the task cache; empty = $DATADIET_FLOW_STORAGE or
            ~/.cache/datadiet/flows.
    """
    params = TrainMeasureParams.of_call(train_and_measure.fn, locals())
    logger = get_run_logger()
    out_dir = Path(params.out)
    eval_fp = source_fingerprint(params.eval_data)
    runs = {}
    for label, data in (("baseline", params.baseline), ("candidate", params.candidate)):
        config = params.train_budget.config(data, params.eval_data).model_dump(mode="json")
        runs[label] = run_checked(
            stored(train_run, params), lambda r: Path(r["report"]).exists(), label=label,
            config=config, data_fingerprint=source_fingerprint(data), eval_fingerprint=eval_fp,
            out=str(out_dir / label))
        logger.info("%s (%s): final eval loss %.4f after %s training FLOPs", label,
                    Path(data).name, runs[label]["final_eval_loss"],
                    f"{runs[label]['train_flops']:.3g}")
    comparison = compare_runs(runs["baseline"]["report"], runs["candidate"]["report"],
                              params.target_loss)
    saved = comparison["flops_saved_x"]
    logger.info("eval loss %.4g: %s", comparison["target_eval_loss"],
                f"candidate needed {saved:.2f}x fewer FLOPs" if saved else
                "one run never reached it; no FLOPs ratio")
    atomic_write_json(out_dir / "comparison.json", {"comparison": comparison, "runs": runs})
    publish_training_report(params, runs, comparison)
    return {"comparison": comparison, "runs": runs, "out": str(out_dir)}


def publish_training_report(params: TrainMeasureParams, runs: dict, comparison: dict) -> None:
    """Loss vs FLOPs for both runs, the before/after table and the headline ratio."""
    reports = {label: _load(run["report"]) for label, run in runs.items()}
    curves = {f"{label} (eval)": ([e["flops"] for e in r["evals"]], [e["eval_loss"] for e in r["evals"]])
              for label, r in reports.items()}
    curves.update({f"{label} (train)": ([row["flops"] for row in r["loss_curve"]],
                                        [row["loss"] for row in r["loss_curve"]])
                   for label, r in reports.items()})
    plot = line_plot(curves, "Loss vs training FLOPs", "training FLOPs", "loss",
                     Path(params.out) / "report" / "loss_vs_flops.png")
    base, cand = reports["baseline"], reports["candidate"]
    measures: dict[str, tuple[Any, Any]] = {
        "documents": (base["data"]["documents"], cand["data"]["documents"]),
        "dataset tokens": (base["data"]["tokens"], cand["data"]["tokens"]),
        "training tokens": (runs["baseline"]["train_tokens"], runs["candidate"]["train_tokens"]),
        "training FLOPs": (runs["baseline"]["train_flops"], runs["candidate"]["train_flops"]),
        "final eval loss": (base["final_eval_loss"], cand["final_eval_loss"]),
        f"FLOPs to eval loss {comparison['target_eval_loss']:.4g}": (
            comparison["baseline_flops"], comparison["candidate_flops"]),
    }
    table = before_after_rows(measures)
    saved = comparison["flops_saved_x"]
    headline = (f"The candidate reached eval loss {comparison['target_eval_loss']:.4g} with "
                f"**{saved:.2f}x fewer FLOPs** than the baseline." if saved else
                f"One of the runs never reached eval loss {comparison['target_eval_loss']:.4g}; "
                "no FLOPs ratio.")
    sections = [
        f"**Baseline** `{params.baseline}` vs **candidate** `{params.candidate}`, both "
        f"{params.train_budget.model} for {base['steps']} steps, evaluated on `{params.eval_data}`.",
        headline,
        "## Baseline and candidate\n\n" + markdown_table(table),
        image_section("Loss vs training FLOPs", plot),
    ]
    publish(series_key("train", params.candidate), "Training report: same model, same budget, two datasets", sections,
            table, "Baseline (before) vs candidate (after): tokens, losses, FLOPs to a loss")


__all__ = ["TrainBudget", "TrainMeasureParams", "train_and_measure"]
