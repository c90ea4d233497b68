"""The library half of the ``efficiency`` chain: its stage plan, its report and its summary.

Why here and not in the flow: the chain's Prefect flow (:mod:`datadiet.flows.chain`) only wires
library calls into tasks; what it plans, counts and writes must work (and be tested) without
Prefect. Nothing here re-reads a corpus to count it: the plan sizes curation by the bytes the
file system reports, and the before/after rows come from what each stage left on disk — the
curation manifest (rows in and out), the training runs' reports (FLOPs), the fine-tuning and
prompt summaries (rows, prompt tokens).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datadiet.experiments.comparison import summarize_pretraining
from datadiet.experiments.progress import plan_efficiency
from datadiet.experiments.report import PromptResults, SavingsReport, write_savings_report
from datadiet.pipeline.io import DataError, find_manifest, list_data_files
from datadiet.pipeline.manifest import Manifest
from datadiet.pipeline.report import RunContext, before_after_rows, inline_images, markdown_table
from datadiet.pipeline.savings import load_run_report
from datadiet.pipeline.stages.training import TrainConfig

__all__ = ["corpus_bytes", "curated_rows", "efficiency_plan", "efficiency_summary",
           "write_efficiency_report"]


def corpus_bytes(source: str | os.PathLike) -> int | None:
    """The size of a local corpus on disk (a file, or a folder's data files), from the file
    system alone; None for a source that is not local (a hub dataset)."""
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        try:
            return sum(f.stat().st_size for f in list_data_files(path))
        except DataError:
            return None
    return None


def efficiency_plan(source: str | os.PathLike, config: TrainConfig, *, prompts: int = 0,
                    fine_tune_steps: int | None = None, pretrain_base: bool = False
                    ) -> list[tuple[str, float]]:
    """The chain's stages with first-guess seconds, for its progress display.

    ``config`` is the training budget of both arms; ``prompts`` the queries to build prompts
    for (0: no prompt stage); ``fine_tune_steps`` the steps of each fine-tuning arm (None: no
    fine-tuning stage), three arms, plus the base model's pre-training on ``source`` when
    ``pretrain_base``.
    """
    tokens = config.steps_for(1) * config.batch_size * config.grad_accum * config.seq_len
    sft_tokens = 0
    if fine_tune_steps is not None:
        steps = max(fine_tune_steps, 1)
        runs = 3 + (config.max_steps / steps if pretrain_base else 0)
        sft_tokens = int(runs * tokens * steps / config.max_steps)
    return plan_efficiency(corpus_bytes(source), 2, tokens, prompts, sft_tokens=sft_tokens)


def curated_rows(curated_dir: str | os.PathLike) -> tuple[int, int]:
    """Rows in and out of a curation, from its manifest."""
    manifest = Manifest.load(_manifest_path(curated_dir))
    rows_in = int(manifest.input["rows"])
    rows_out = manifest.output.get("rows")
    if rows_out is None:
        rows_out = manifest.steps[-1].rows_out if manifest.steps else rows_in
    return rows_in, int(rows_out)


def _manifest_path(curated_dir: str | os.PathLike) -> Path:
    found = find_manifest(curated_dir)
    if found is None:
        raise DataError(f"{curated_dir}: no datadiet manifest (is it a `datadiet curate` output?)")
    return found


def write_efficiency_report(out: str | os.PathLike, source: str, eval_data: str,
                            curated_dir: str | os.PathLike, training_runs: dict[str, Any], *,
                            command: str, strategies: dict | None = None,
                            finetuned: dict | None = None) -> Path:
    """``out/report.md`` and its plots: the saved-compute report of the whole chain.

    ``training_runs`` maps ``baseline`` and ``candidate`` to a dict with the run's ``report``
    (its ``report.json``); ``strategies`` is :func:`~datadiet.experiments.prompts.
    compare_strategies`'s result as a dict; ``finetuned`` the fine-tuning stage's summary.
    """
    summary = summarize_pretraining(source, curated_dir,
                                    [load_run_report(training_runs["baseline"]["report"])],
                                    [load_run_report(training_runs["candidate"]["report"])])
    report = SavingsReport(
        context=RunContext(command=command, seeds=summary["seeds"],
                           data=f"{source}; eval {eval_data}"),
        pretraining=summary, finetuning=finetuned)
    if finetuned is None:
        report.missing["sft"] = "no instruction pool given (flow parameter `sft_pool`)"
    if strategies:
        report.prompts = PromptResults(**strategies)
    else:
        report.missing["prompts"] = "no demonstration pool given"
    return write_savings_report(out, report)


def efficiency_summary(source: str, curated: dict[str, Any], trained: dict[str, Any],
                       report_path: Path, *, finetuned: dict | None = None,
                       prompts: dict | None = None) -> tuple[list[dict], list[str]]:
    """The chain's before/after table and its markdown sections (the report inlined last).

    ``curated`` is the curate stage's result (its ``out`` folder, whose manifest gives the
    rows, and the ``tokens_in``/``tokens_out`` it counted); ``trained`` the training stage's
    (``out``, per-run ``train_flops``, the ``comparison``); ``finetuned`` and ``prompts`` the
    optional stages' summaries.
    """
    comparison = trained["comparison"]
    runs = trained["runs"]
    measures: dict[str, tuple[Any, Any]] = {
        "corpus rows": curated_rows(curated["out"]),
        "corpus tokens": (curated["tokens_in"], curated["tokens_out"]),
        "training FLOPs (same budget)": (runs["baseline"]["train_flops"],
                                         runs["candidate"]["train_flops"]),
        f"training FLOPs to eval loss {comparison['target_eval_loss']:.4g}": (
            comparison["baseline_flops"], comparison["candidate_flops"]),
    }
    if finetuned:
        measures["instruction rows"] = (finetuned["pool_rows"],
                                        finetuned["selections"]["selected"]["rows_out"])
    if prompts:
        measures["prompt tokens"] = (prompts["tokens_before"], prompts["tokens_after"])
    table = before_after_rows(measures)
    saved = comparison["flops_saved_x"]
    sections = [
        f"Corpus `{source}` → curated `{curated['out']}`; training runs in `{trained['out']}`"
        + (f"; prompts in `{prompts['prompts']}`." if prompts else "."),
        (f"Curated data reached the target eval loss with **{saved:.2f}x fewer training FLOPs**."
         if saved else "One run never reached the target eval loss: no FLOPs ratio."),
        "## Before and after\n\n" + markdown_table(table),
        "Each stage's own report (plots included) is on its subflow run.",
        inline_images(report_path.read_text(encoding="utf-8"), report_path.parent),
    ]
    return table, sections
