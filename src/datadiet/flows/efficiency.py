"""The ``efficiency`` flow, the product's main job: curate, prove it by training, build prompts.

It chains the three flows as subflows (each keeps its own report and cache): ``curate`` the
corpus, ``train_and_measure`` the same model on the full and the curated corpus, and, given a
labelled pool, ``build_prompts`` for an evaluation set. Its own report puts the savings of the
whole chain in one table: rows, tokens and FLOPs before and after, followed by the saved-compute
report the library writes to ``out/report.md`` (:mod:`datadiet.experiments.report`: claims
against targets, the loss-vs-FLOPs plot with the target line, honest notes). A progress display
(stage lines in the log, a progress artifact in the UI) says which stage runs and the time left.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from pydantic import Field, field_validator, model_validator

from datadiet.experiments.comparison import summarize_pretraining
from datadiet.experiments.finetuning import DEFAULT_SFT_SPEC, finetuning_stage
from datadiet.experiments.progress import StageClock, plan_efficiency
from datadiet.experiments.prompts import compare_strategies
from datadiet.experiments.report import PromptResults, SavingsReport, write_savings_report
from datadiet.flows.common import FlowParams, cached_task, stored
from datadiet.flows.curate import DEFAULT_SPEC, CurateParams, ScaleOut, curate, normalised_spec
from datadiet.flows.prompts import PromptParams, build_prompts
from datadiet.flows.report import before_after_rows, markdown_table, publish
from datadiet.flows.training import TrainBudget, TrainMeasureParams, train_and_measure
from datadiet.pipeline.io import source_fingerprint
from datadiet.pipeline.report import RunContext, inline_images
from datadiet.pipeline.savings import load_run_report
from datadiet.pipeline.stages.training import TrainConfig
from datadiet.prompting.demos import load_template
from datadiet.prompting.icl import read_labelled


class EfficiencyParams(FlowParams):
    """Parameters of ``efficiency`` (the sub-flows get theirs from these)."""

    source: str = Field(description="The full corpus to curate and train on.")
    out: str = Field(description="Root folder: curated/, training/, prompts/ go inside.")
    spec: str = Field(DEFAULT_SPEC, description="Curation steps (YAML text or a spec file).")
    eval_data: str = Field(description="Held-out text both training runs are evaluated on.")
    budget: TrainBudget = Field(default_factory=TrainBudget, description="Model and budget of "
                                "both training runs.")
    scale: ScaleOut = Field(default_factory=ScaleOut)
    tokenizer: str | None = Field(None, description="Tokenizer for the curation report's counts.")
    overwrite: bool = Field(True, description="Replace earlier outputs under `out` when the "
                            "inputs changed (unchanged inputs are served from the cache).")
    pool: str | None = Field(None, description="Labelled demonstrations pool; empty = skip the "
                             "prompt-building stage.")
    eval_set: str | None = Field(None, description="Queries to build prompts for.")
    k: int = Field(4, ge=0, le=64)
    compress_rate: float = Field(0.5, gt=0.0, le=1.0)
    compression_model: str | None = Field(None, description="Scoring model for compression.")
    prompt_limit: int | None = Field(None, ge=1, description="Use only the first N queries.")
    sft_pool: str | None = Field(None, description="Instruction pool (JSONL: id, prompt, "
                                 "completion) for the fine-tuning stage; empty = skip it.")
    sft_eval: str | None = Field(None, description="Clean held-out pairs (same fields) the "
                                 "fine-tuned models are evaluated on.")
    sft_truth: str | None = Field(None, description="The pool's ground truth (truth.json of a "
                                  "planted pool), to report which planted rows were removed.")
    sft_spec: str = Field(yaml.safe_dump(DEFAULT_SFT_SPEC, sort_keys=False),
                          description="Fine-tuning selection steps (YAML text or a spec file).")
    sft_base: str | None = Field(None, description="Model folder to fine-tune; empty = the "
                                 "budget's model pre-trained on `source` first.")
    sft_steps: int = Field(60, ge=1, description="Fine-tuning steps of every arm.")

    @field_validator("source", "eval_data")
    @classmethod
    def _exists(cls, value: str) -> str:
        source_fingerprint(value)
        return value

    @model_validator(mode="after")
    def _parts_validate(self) -> EfficiencyParams:
        self.curate_params()
        self.budget.config(self.source, self.eval_data)
        if (self.pool is None) != (self.eval_set is None):
            raise ValueError("pool and eval_set: give both (to build prompts) or neither")
        if self.pool is not None:
            self.prompt_params()
        if (self.sft_pool is None) != (self.sft_eval is None):
            raise ValueError("sft_pool and sft_eval: give both (to fine-tune) or neither")
        for path in (self.sft_pool, self.sft_eval, self.sft_truth, self.sft_base):
            if path is not None:
                source_fingerprint(path)
        normalised_spec(self.sft_spec)
        return self

    def curate_params(self) -> CurateParams:
        return CurateParams(source=self.source, out=str(Path(self.out) / "curated"),
                            spec=self.spec, overwrite=self.overwrite, scale=self.scale,
                            tokenizer=self.tokenizer, storage=self.storage)

    def train_params(self, curated: str) -> TrainMeasureParams:
        return TrainMeasureParams(baseline=self.source, candidate=curated,
                                  eval_data=self.eval_data, budget=self.budget,
                                  out=str(Path(self.out) / "training"), storage=self.storage)

    def prompt_params(self) -> PromptParams:
        return PromptParams(pool=self.pool, eval_set=self.eval_set, k=self.k,
                            compress_rate=self.compress_rate, model=self.compression_model,
                            limit=self.prompt_limit, out=str(Path(self.out) / "prompts"),
                            storage=self.storage)


def _clock(params: EfficiencyParams) -> StageClock:
    """The progress display: stage lines in the log, a progress artifact in the UI."""
    rows = 1000  # a folder or hub source: a guess; the pace corrects it after the first stage
    if Path(params.source).is_file():
        with open(params.source, "rb") as f:
            rows = sum(1 for _ in f)
    config = params.budget.config(params.source, params.eval_data)
    tokens = config.steps_for(1) * config.batch_size * config.grad_accum * config.seq_len
    sft_runs = 0 if params.sft_pool is None else 3 + (params.sft_base is None) * config.max_steps \
        / max(params.sft_steps, 1)  # the base's pre-training, in fine-tuning runs
    plan = plan_efficiency(rows, 2, tokens, (params.prompt_limit or 20) if params.pool else 0,
                           sft_tokens=int(sft_runs * tokens * params.sft_steps / config.max_steps))
    progress = create_progress_artifact(0.0, key="datadiet-efficiency-progress",
                                        description="Stages of the efficiency chain done")
    return StageClock(plan, say=print,
                      on_fraction=lambda done: update_progress_artifact(progress, 100.0 * done))


@cached_task(task_run_name="score prompting strategies on {eval_set}")
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
                                 progress=print)
    return asdict(results)


@cached_task(task_run_name="fine-tune all vs selected vs random on {pool}")
def finetune(pool: str, pool_fingerprint: str, eval_pairs: str, eval_fingerprint: str,
             spec: list, budget: dict, settings: dict) -> dict:
    """The fine-tuning stage (one library call); returns its summary."""
    return finetuning_stage(settings["out"], pool, eval_pairs, spec, TrainConfig(**budget),
                            steps=settings["steps"], base=settings["base"],
                            base_corpus=settings["source"], truth=settings["truth"],
                            progress=print)


def write_report(params: EfficiencyParams, curated: dict, trained: dict,
                 strategies: dict | None, finetuned: dict | None = None) -> Path:
    """``out/report.md`` and its plots, written by the library from the subflows' files."""
    runs = trained["runs"]
    summary = summarize_pretraining(params.source, curated["out"],
                                    [load_run_report(runs["baseline"]["report"])],
                                    [load_run_report(runs["candidate"]["report"])])
    report = SavingsReport(
        context=RunContext(command=f"efficiency flow run {flow_run.name or '-'} "
                           f"(source {params.source})", seeds=summary["seeds"],
                           data=f"{params.source}; eval {params.eval_data}"),
        pretraining=summary, finetuning=finetuned)
    if finetuned is None:
        report.missing["sft"] = "no instruction pool given (flow parameter `sft_pool`)"
    if strategies:
        report.prompts = PromptResults(**strategies)
    else:
        report.missing["prompts"] = "no demonstration pool given"
    return write_savings_report(params.out, report)


@flow(name="datadiet-efficiency", log_prints=True, validate_parameters=True)
def efficiency(params: EfficiencyParams) -> dict:
    """Curate, train on full vs curated with one budget, build compressed prompts; report."""
    clock = _clock(params)
    clock.start("curate")
    curated = curate(params.curate_params())
    clock.start("train", "the same model on full and curated data, same budget")
    trained = train_and_measure(params.train_params(curated["out"]))
    finetuned = None
    if params.sft_pool:
        clock.start("fine-tune", "all vs selected vs random instruction rows, same base")
        finetuned = stored(finetune, params)(
            pool=params.sft_pool, pool_fingerprint=source_fingerprint(params.sft_pool),
            eval_pairs=params.sft_eval, eval_fingerprint=source_fingerprint(params.sft_eval),
            spec=normalised_spec(params.sft_spec),
            budget=params.budget.config(params.source, params.eval_data).model_dump(),
            settings={"out": str(Path(params.out) / "finetuning"), "steps": params.sft_steps,
                      "base": params.sft_base, "source": params.source,
                      "truth": params.sft_truth})
    prompts = None
    strategies = None
    if params.pool:
        clock.start("prompts", "demonstrations and compression")
        prompt_params = params.prompt_params()
        prompts = build_prompts(prompt_params)
        clock.start("score prompts", "zero-shot, random, best, best compressed")
        strategies = stored(score_strategies, params)(
            pool=params.pool, pool_fingerprint=source_fingerprint(params.pool),
            eval_set=params.eval_set, eval_fingerprint=source_fingerprint(params.eval_set),
            settings=prompt_params.model_dump(include={"k", "compress_rate", "model", "limit",
                                                       "template", "label_field"}))
    clock.start("report")
    report_path = write_report(params, curated, trained, strategies, finetuned)
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
    if finetuned:
        selected = finetuned["selections"]["selected"]
        measures["instruction rows"] = (finetuned["pool_rows"], selected["rows_out"])
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
    publish("datadiet-efficiency", "Efficiency report: curation, training, prompts", sections,
            table, "The chain's savings: before (full / uncompressed) and after")
    clock.finish()
    return {"curate": curated, "train": trained, "finetune": finetuned, "prompts": prompts,
            "report": str(report_path)}


__all__ = ["EfficiencyParams", "efficiency"]
