"""The ``efficiency`` flow, the product's main job: curate, prove it by training, build prompts.

It chains the three flows as subflows (each keeps its own report and cache): ``curate`` the
corpus, ``train_and_measure`` the same model on the full and the curated corpus, and, given a
labelled pool, ``build_prompts`` for an evaluation set. Its own report puts the savings of the
whole chain in one table: rows, tokens and FLOPs before and after, followed by the saved-compute
report the library writes to ``out/report.md`` (:mod:`datadiet.experiments.report`: claims
against targets, the loss-vs-FLOPs plot with the target line, honest notes). A progress display
(stage lines in the log, a progress artifact in the UI) says which stage runs and the time left.

Thin on purpose: the plan, the report and the before/after table are library calls
(:mod:`datadiet.experiments.efficiency`), whose counts come from what the stages left on disk
(the curation manifest, the runs' reports), never from re-reading the corpus.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from pydantic import Field, field_validator, model_validator

from datadiet.experiments.efficiency import (
    efficiency_plan,
    efficiency_summary,
    write_efficiency_report,
)
from datadiet.experiments.finetuning import DEFAULT_SFT_SPEC, finetuning_stage
from datadiet.experiments.progress import StageClock
from datadiet.experiments.prompts import compare_strategies_on_files
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
    normalised_spec,
)
from datadiet.flows.prompts import Demos, Limit, PromptParams, Rate, build_prompts
from datadiet.flows.report import publish
from datadiet.flows.training import TrainBudget, train_and_measure
from datadiet.pipeline.io import source_fingerprint
from datadiet.pipeline.stages.training import TrainConfig

SftSteps = Annotated[int, Field(ge=1)]
DEFAULT_SFT_SPEC_YAML = yaml.safe_dump(DEFAULT_SFT_SPEC, sort_keys=False)


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
    sft_pool: str | None
    sft_eval: str | None
    sft_truth: str | None
    sft_spec: str
    sft_base: str | None
    sft_steps: SftSteps

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
        if (self.sft_pool is None) != (self.sft_eval is None):
            raise ValueError("sft_pool and sft_eval: give both (to fine-tune) or neither")
        for path in (self.sft_pool, self.sft_eval, self.sft_truth, self.sft_base):
            if path is not None:
                source_fingerprint(path)
        normalised_spec(self.sft_spec)
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
    plan = efficiency_plan(params.source, params.train_budget.config(params.source, params.eval_data),
                           prompts=(params.prompt_limit or 20) if params.pool else 0,
                           fine_tune_steps=params.sft_steps if params.sft_pool else None,
                           pretrain_base=params.sft_base is None)
    progress = create_progress_artifact(
        0.0, key=f"{series_key('efficiency', params.source)}-progress",
        description="Stages of the efficiency chain done")
    return StageClock(plan, say=get_run_logger().info,
                      on_fraction=lambda done: update_progress_artifact(progress, 100.0 * done))


@cached_task(task_run_name=task_run_namer("score prompting strategies on {eval_set}"))
def score_strategies(pool: str, pool_fingerprint: str, eval_set: str, eval_fingerprint: str,
                     settings: dict) -> dict:
    """Accuracy and prompt tokens of zero-shot, random, best and best-compressed prompts."""
    return asdict(compare_strategies_on_files(pool, eval_set, **settings,
                                              progress=get_run_logger().info))


@cached_task(task_run_name=task_run_namer("fine-tune all vs selected vs random on {pool}"))
def finetune(pool: str, pool_fingerprint: str, eval_pairs: str, eval_fingerprint: str,
             spec: list, budget: dict, settings: dict) -> dict:
    """The fine-tuning stage (one library call); returns its summary."""
    return finetuning_stage(settings["out"], pool, eval_pairs, spec, TrainConfig(**budget),
                            steps=settings["steps"], base=settings["base"],
                            base_corpus=settings["source"], truth=settings["truth"],
                            progress=get_run_logger().info)


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
    sft_pool: str | None = None,
    sft_eval: str | None = None,
    sft_truth: str | None = None,
    sft_spec: str = DEFAULT_SFT_SPEC_YAML,
    sft_base: str | None = None,
    sft_steps: SftSteps = 60,
    storage: str | None = None,
) -> dict:
    """Curate, train on full vs curated with one budget, build compressed prompts; report.

    Args:
        source: The full corpus to curate and train on.
        out: Root folder: curated/, training/, prompts/ and report.md go inside.
        eval_data: Held-out text both training runs are evaluated on.
        spec: Curation steps (YAML text or a spec file).
        budget: Model and budget of both training runs; empty = the defaults.
        runner: Where curation runs: `local` (this process) or `dask` (a Dask cluster).
        dask_address: Dask scheduler address; empty = a local cluster of `workers` processes.
        workers: Workers of the local Dask cluster (the local runner ignores it).
        shards: Deprecated, ignored (see the curate flow).
        tokenizer: Tokenizer for the curation report's counts.
        overwrite: Replace earlier outputs under `out` when the inputs changed (unchanged
            inputs are served from the cache).
        pool: Labelled demonstrations pool; empty = skip the prompt-building stage.
        eval_set: Queries to build prompts for (with `pool`).
        k: Demonstrations per prompt.
        compress_rate: Keep this fraction of the demonstrations' tokens.
        compression_model: Scoring model for compression; empty = the offline SmolLM2.
        prompt_limit: Use only the first N queries.
        sft_pool: Instruction pool (JSONL: id, prompt, completion) for the fine-tuning stage;
            empty = skip it.
        sft_eval: Clean held-out pairs (same fields) the fine-tuned models are evaluated on.
        sft_truth: The pool's ground truth (truth.json of a planted pool), to report which
            planted rows were removed.
        sft_spec: Fine-tuning selection steps (YAML text or a spec file).
        sft_base: Model folder to fine-tune; empty = the budget's model pre-trained on
            `source` first.
        sft_steps: Fine-tuning steps of every arm.
        storage: Folder for the task cache; empty = $DATADIET_FLOW_STORAGE or
            ~/.cache/datadiet/flows.
    """
    params = EfficiencyParams.of_call(efficiency.fn, locals())
    clock = _clock(params)
    clock.start("curate")
    curated = curate(**params.curate_args())
    clock.start("train", "the same model on full and curated data, same budget")
    trained = train_and_measure(**params.train_args(curated["out"]))
    finetuned = None
    if params.sft_pool:
        clock.start("fine-tune", "all vs selected vs random instruction rows, same base")
        finetuned = stored(finetune, params)(
            pool=params.sft_pool, pool_fingerprint=source_fingerprint(params.sft_pool),
            eval_pairs=params.sft_eval, eval_fingerprint=source_fingerprint(params.sft_eval),
            spec=normalised_spec(params.sft_spec),
            budget=params.train_budget.config(params.source, params.eval_data).model_dump(),
            settings={"out": str(Path(params.out) / "finetuning"), "steps": params.sft_steps,
                      "base": params.sft_base, "source": params.source,
                      "truth": params.sft_truth})
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
    report_path = write_efficiency_report(
        params.out, params.source, params.eval_data, curated["out"], trained["runs"],
        command=f"efficiency flow run {flow_run.name or '-'} (source {params.source})",
        strategies=strategies, finetuned=finetuned)
    table, sections = efficiency_summary(params.source, curated, trained, report_path,
                                         finetuned=finetuned, prompts=prompts)
    publish(series_key("efficiency", params.source), "Efficiency report: curation, training, prompts", sections,
            table, "The chain's savings: before (full / uncompressed) and after")
    clock.finish()
    return {"curate": curated, "train": trained, "finetune": finetuned, "prompts": prompts,
            "report": str(report_path)}


__all__ = ["EfficiencyParams", "efficiency"]
