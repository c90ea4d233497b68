"""The ``efficiency`` flow, the product's main job: curate, prove it by training, build prompts.

It chains the three flows as subflows (each keeps its own report and cache): ``curate`` the
corpus, ``train_and_measure`` the same model on the full and the curated corpus, and, given a
labelled pool, ``build_prompts`` for an evaluation set. Its own report puts the savings of the
whole chain in one table: rows, tokens and FLOPs before and after.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import Field, field_validator, model_validator

from datadiet.flows.common import FlowParams
from datadiet.flows.curate import DEFAULT_SPEC, CurateParams, ScaleOut, curate
from datadiet.flows.prompts import PromptParams, build_prompts
from datadiet.flows.report import before_after_rows, markdown_table, publish
from datadiet.flows.training import TrainBudget, TrainMeasureParams, train_and_measure
from datadiet.pipeline.io import source_fingerprint


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


@flow(name="datadiet-efficiency", log_prints=True, validate_parameters=True)
def efficiency(params: EfficiencyParams) -> dict:
    """Curate, train on full vs curated with one budget, build compressed prompts; report."""
    curated = curate(params.curate_params())
    trained = train_and_measure(params.train_params(curated["out"]))
    prompts = build_prompts(params.prompt_params()) if params.pool else None
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
    ]
    publish("datadiet-efficiency", "Efficiency report: curation, training, prompts", sections,
            table, "The chain's savings: before (full / uncompressed) and after")
    return {"curate": curated, "train": trained, "prompts": prompts}


__all__ = ["EfficiencyParams", "efficiency"]
