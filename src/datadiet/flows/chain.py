"""The ``efficiency`` flow, the product's main job: curate, prove it by training, build prompts.

It chains the three flows as subflows (each keeps its own report and cache): ``curate`` the
corpus, ``train_and_measure`` the same model on the full and the curated corpus, and, given a
labelled pool, ``build_prompts`` for an evaluation set. Its own report puts the savings of the
whole chain in one table: rows, tokens and FLOPs before and after, followed by the saved-compute
report the library writes to ``out/report.md`` (:mod:`datadiet.pipeline.demo.report`: claims
against targets, the loss-vs-FLOPs plot with the target line, honest notes). A progress display
(stage lines in the log, a progress artifact in the UI) says which stage runs and the time left.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from pydantic import field_validator, model_validator

from datadiet.flows.common import (
    FlowParams,
    cached_task,
    flow_run_namer,
    series_key,
    stored,
    task_run_namer,
)
from datadiet.flows.curation import (
    DEFAULT_SPEC,
    CurateParams,
    RunnerKind,
    Shards,
    Workers,
    curate,
)
from datadiet.flows.prompts import Demos, Limit, PromptParams, Rate, build_prompts
from datadiet.flows.report import before_after_rows, markdown_table, publish
from datadiet.flows.training import TrainBudget, train_and_measure
from datadiet.pipeline.demo.comparison import summarize_pretraining
from datadiet.pipeline.demo.progress import StageClock, plan_efficiency
from datadiet.pipeline.demo.report import PromptResults, SavingsReport, write_savings_report
from datadiet.pipeline.io import source_fingerprint
from datadiet.pipeline.report import RunContext, inline_images
from datadiet.pipeline.savings import load_run_report
from datadiet.prompting.demos import load_template
from datadiet.prompting.icl import read_labelled
from datadiet.prompting.strategies import compare_strategies


class EfficiencyParams(FlowParams):
    """The ``efficiency`` flow's parameters, checked together: every subflow's parameters
    check, and the prompt stage has both of its files or neither. The flow builds one from its
    arguments before any stage runs."""

    source: str
    out: str
    eval_data: str
    spec: str
    budget: TrainBudget | None
    runner: RunnerKind
    dask_address: str | None
    workers: Workers
    shards: Shards
    tokenizer: str | None
    overwrite: bool
    pool: str | None
    eval_set: str | None
    k: Demos
    compress_rate: Rate
    compression_model: str | None
    prompt_limit: Limit

    @field_validator("source", "eval_data")
    @classmethod
    def _exists(cls, value: str) -> str:
        source_fingerprint(value)
        return value

    @model_validator(mode="after")
    def _parts_validate(self) -> EfficiencyParams:
        CurateParams.of_call(curate.fn, self.curate_args())
        self.train_budget.config(self.source, self.eval_data)
        if (self.pool is None) != (self.eval_set is None):
            raise ValueError("pool and eval_set: give both (to build prompts) or neither")
        if self.pool is not None:
            PromptParams.of_call(build_prompts.fn, self.prompt_args())
        return self

    @property
    def train_budget(self) -> TrainBudget:
        return self.budget or TrainBudget()

    def curate_args(self) -> dict[str, Any]:
        return dict(source=self.source, out=str(Path(self.out) / "curated"), spec=self.spec,
                    overwrite=self.overwrite, runner=self.runner, dask_address=self.dask_address,
                    workers=self.workers, shards=self.shards, tokenizer=self.tokenizer,
                    storage=self.storage)

    def train_args(self, curated: str) -> dict[str, Any]:
        return dict(baseline=self.source, candidate=curated, eval_data=self.eval_data,
                    budget=self.train_budget, out=str(Path(self.out) / "training"),
                    storage=self.storage)

    def prompt_args(self) -> dict[str, Any]:
        return dict(pool=self.pool, eval_set=self.eval_set, k=self.k,
                    compress_rate=self.compress_rate, model=self.compression_model,
                    limit=self.prompt_limit, out=str(Path(self.out) / "prompts"),
                    storage=self.storage)


def _clock(params: EfficiencyParams) -> StageClock:
    """The progress display: stage lines in the log, a progress artifact in the UI."""
    rows = 1000  # a folder or hub source: a guess; the pace corrects it after the first stage
    if Path(params.source).is_file():
        with open(params.source, "rb") as f:
            rows = sum(1 for _ in f)
    config = params.train_budget.config(params.source, params.eval_data)
    tokens = config.steps_for(1) * config.batch_size * config.grad_accum * config.seq_len
    plan = plan_efficiency(rows, 2, tokens, (params.prompt_limit or 20) if params.pool else 0)
    progress = create_progress_artifact(
        0.0, key=f"{series_key('efficiency', params.source)}-progress",
        description="Stages of the efficiency chain done")
    return StageClock(plan, say=get_run_logger().info,
                      on_fraction=lambda done: update_progress_artifact(progress, 100.0 * done))


@cached_task(task_run_name=task_run_namer("score prompting strategies on {eval_set}"))
def score_strategies(pool: str, pool_fingerprint: str, eval_set: str, eval_fingerprint: str,
                     settings: dict) -> dict:
    """Accuracy and prompt tokens of zero-shot, random, best and best-compressed prompts."""
    s = settings
    pool_rows = read_labelled(pool, label_field=s["label_field"])
    test = read_labelled(eval_set, label_field=s["label_field"])
    test = test.subset(range(min(s["limit"] or len(test), len(test))))  # as build_prompts
    template = load_template(s["template"], sorted(set(pool_rows.labels)))
    results = compare_strategies(pool_rows, test, template, task=Path(eval_set).name, k=s["k"],
                                 compress_rate=s["compress_rate"], model=s["model"],
                                 progress=get_run_logger().info)
    return asdict(results)


def write_report(params: EfficiencyParams, curated: dict, trained: dict,
                 strategies: dict | None) -> Path:
    """``out/report.md`` and its plots, written by the library from the subflows' files."""
    runs = trained["runs"]
    summary = summarize_pretraining(params.source, curated["out"],
                                    [load_run_report(runs["baseline"]["report"])],
                                    [load_run_report(runs["candidate"]["report"])])
    report = SavingsReport(
        context=RunContext(command=f"efficiency flow run {flow_run.name or '-'} "
                           f"(source {params.source})", seeds=summary["seeds"],
                           data=f"{params.source}; eval {params.eval_data}"),
        pretraining=summary,
        missing={"sft": "the efficiency chain has no fine-tuning stage"})
    if strategies:
        report.prompts = PromptResults(**strategies)
    else:
        report.missing["prompts"] = "no demonstration pool given"
    return write_savings_report(params.out, report)


@flow(name="datadiet-efficiency", flow_run_name=flow_run_namer("efficiency of {source} → {out}/"),
      log_prints=False, validate_parameters=True)
def efficiency(
    source: str,
    out: str,
    eval_data: str,
    spec: str = DEFAULT_SPEC,
    budget: TrainBudget | None = None,
    runner: RunnerKind = "local",
    dask_address: str | None = None,
    workers: Workers = 2,
    shards: Shards = 0,
    tokenizer: str | None = None,
    overwrite: bool = True,
    pool: str | None = None,
    eval_set: str | None = None,
    k: Demos = 4,
    compress_rate: Rate = 0.5,
    compression_model: str | None = None,
    prompt_limit: Limit = None,
    storage: str | None = None,
) -> dict:
    """Curate, train on full vs curated with one budget, build compressed prompts; report.

    Args:
        source: The full corpus to curate and train on.
        out: Root folder: curated/, training/, prompts/ and report.md go inside.
        eval_data: Held-out text both training runs are evaluated on.
        spec: Curation steps (YAML text or a spec file).
        budget: Model and budget of both training runs; empty = the defaults.
        runner: Where curation's per-shard work runs: `local` or `dask`.
        dask_address: Dask scheduler address; empty = a local cluster of `workers` processes.
        workers: Workers of the local Dask cluster (threads for the local runner).
        shards: Shards to split the corpus into; 0 = one per worker with dask.
        tokenizer: Tokenizer for the curation report's counts.
        overwrite: Replace earlier outputs under `out` when the inputs changed (unchanged
            inputs are served from the cache).
        pool: Labelled demonstrations pool; empty = skip the prompt-building stage.
        eval_set: Queries to build prompts for (with `pool`).
        k: Demonstrations per prompt.
        compress_rate: Keep this fraction of the demonstrations' tokens.
        compression_model: Scoring model for compression; empty = the offline SmolLM2.
        prompt_limit: Use only the first N queries.
        storage: Folder for the task cache; empty = $DATADIET_FLOW_STORAGE or
            ~/.cache/datadiet/flows.
    """
    params = EfficiencyParams.of_call(efficiency.fn, locals())
    clock = _clock(params)
    clock.start("curate")
    curated = curate(**params.curate_args())
    clock.start("train", "the same model on full and curated data, same budget")
    trained = train_and_measure(**params.train_args(curated["out"]))
    prompts = None
    strategies = None
    if params.pool:
        clock.start("prompts", "demonstrations and compression")
        prompt_params = PromptParams.of_call(build_prompts.fn, params.prompt_args())
        prompts = build_prompts(**params.prompt_args())
        clock.start("score prompts", "zero-shot, random, best, best compressed")
        strategies = stored(score_strategies, params)(
            pool=params.pool, pool_fingerprint=source_fingerprint(params.pool),
            eval_set=params.eval_set, eval_fingerprint=source_fingerprint(params.eval_set),
            settings=prompt_params.model_dump(include={"k", "compress_rate", "model", "limit",
                                                       "template", "label_field"}))
    clock.start("report")
    report_path = write_report(params, curated, trained, strategies)
    comparison = trained["comparison"]
    runs = trained["runs"]
    measures = {
        "corpus rows": (curated["rows_in"], curated["rows_out"]),
        "corpus tokens": (curated["tokens_in"], curated["tokens_out"]),
        "training FLOPs (same budget)": (runs["baseline"]["train_flops"],
                                         runs["candidate"]["train_flops"]),
        f"training FLOPs to eval loss {comparison['target_eval_loss']:.4g}": (
            comparison["baseline_flops"], comparison["candidate_flops"]),
    }
    if prompts:
        measures["prompt tokens"] = (prompts["tokens_before"], prompts["tokens_after"])
    table = before_after_rows(measures)
    saved = comparison["flops_saved_x"]
    sections = [
        f"Corpus `{params.source}` → curated `{curated['out']}`; training runs in "
        f"`{trained['out']}`" + (f"; prompts in `{prompts['prompts']}`." if prompts else "."),
        (f"Curated data reached the target eval loss with **{saved:.2f}x fewer training FLOPs**."
         if saved else "One run never reached the target eval loss: no FLOPs ratio."),
        "## Before and after\n\n" + markdown_table(table),
        "Each stage's own report (plots included) is on its subflow run.",
        inline_images(report_path.read_text(encoding="utf-8"), report_path.parent),
    ]
    publish(series_key("efficiency", params.source), "Efficiency report: curation, training, prompts", sections,
            table, "The chain's savings: before (full / uncompressed) and after")
    clock.finish()
    return {"curate": curated, "train": trained, "prompts": prompts, "report": str(report_path)}


__all__ = ["EfficiencyParams", "efficiency"]
