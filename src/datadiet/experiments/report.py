"""The saved-compute report: ``report.md`` with the savings table, the plots and honest notes.

One writer for ``benchmarks/e2e.py``, ``datadiet demo`` and the ``efficiency`` flow (which
publishes the same markdown as a Prefect artifact). It takes plain summaries — the dict of
:func:`~datadiet.experiments.comparison.pretraining_comparison`, a fine-tuning summary of
the same shape, and rows of ``{strategy, accuracy, mean_prompt_tokens}`` for prompts — so it
imports nothing from the prompting or selector rooms.

Every figure carries its provenance (command, seeds, data, machine) under it, and the report
links the curation manifest and every run's ``report.json`` (which holds its ledger). The notes
section is generated from the numbers: where a ratio misses its target, where a seed never
reached the baseline's loss, what a model-based curation step would have cost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datadiet.pipeline.report import (
    RunContext,
    loss_vs_flops_plot,
    markdown_table,
    strategy_plot,
    write_markdown,
)

__all__ = [
    "PromptResults",
    "SavingsReport",
    "Targets",
    "headline_numbers",
    "write_savings_report",
]

REPORT_FILE = "report.md"
#: Keys of ``SavingsReport.missing`` and how the report names them.
PART_NAMES = {"train": "pre-training", "sft": "fine-tuning", "prompts": "prompts",
              "icl_accuracy": "prompt accuracy"}


@dataclass(frozen=True)
class Targets:
    """The product's claims, as thresholds the report checks."""

    train_flops_ratio: float = 2.0
    sft_flops_ratio: float = 2.0
    prompt_token_ratio: float = 3.0
    icl_acc_drop_points: float = 2.0


@dataclass
class PromptResults:
    """Accuracy and prompt length per prompting strategy on one task."""

    task: str
    model: str
    rows: list[dict[str, Any]]  # {strategy, accuracy (None: not measured), mean_prompt_tokens, ...}
    best: str  # the uncompressed strategy the compression is compared with
    compressed: str
    notes: list[str] = field(default_factory=list)

    def row(self, strategy: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["strategy"] == strategy)


@dataclass
class SavingsReport:
    """Everything the report shows; parts that did not run are ``None`` with a reason."""

    context: RunContext
    pretraining: dict[str, Any] | None = None
    finetuning: dict[str, Any] | None = None
    prompts: PromptResults | None = None
    missing: dict[str, str] = field(default_factory=dict)  # part -> why it was not measured
    targets: Targets = field(default_factory=Targets)


def headline_numbers(report: SavingsReport) -> dict[str, Any]:
    """The JSON headline: ratios with their spread over seeds, and which targets were met."""
    out: dict[str, Any] = {}
    for key, part in (("train", report.pretraining), ("sft", report.finetuning)):
        if part is None:
            out[f"{key}_flops_ratio"] = None
            continue
        ratio = part["savings"]["ratio"]
        out[f"{key}_flops_ratio"] = ratio["mean"]
        out[f"{key}_flops_ratio_spread"] = ratio
        out[f"{key}_seeds_reached"] = f"{ratio['n']}/{ratio['of']}"
    if report.finetuning is not None:
        part = report.finetuning
        out["sft_data_efficiency"] = (part.get("data_efficiency") or {}).get("selected")
        out["sft_break_even_params"] = ((part.get("break_even") or {}).get("selected")
                                        or {}).get("params_epochs")
        out["sft_final_eval_loss"] = {arm: row["final eval loss (mean)"]
                                      for arm, row in part.get("arms_table", {}).items()}
        out["sft_removal_precision"] = {name: r["precision"]
                                        for name, r in (part.get("planted") or {}).items()}
        out["sft_by_method"] = {name: {"data_efficiency": eff["mean"],
                                       "flops_ratio": part["comparisons"][name]["ratio"]["mean"],
                                       "break_even_params": part["break_even"][name]
                                       ["params_epochs"]}
                                for name, eff in (part.get("data_efficiency") or {}).items()}
    prompts = report.prompts
    if prompts is None:
        out["prompt_token_ratio"] = out["icl_acc_drop"] = None
    else:
        best, small = prompts.row(prompts.best), prompts.row(prompts.compressed)
        out["prompt_token_ratio"] = (best["mean_prompt_tokens"] / small["mean_prompt_tokens"]
                                     if small["mean_prompt_tokens"] else None)
        measured = best.get("accuracy") is not None and small.get("accuracy") is not None
        out["icl_acc_drop"] = 100.0 * (best["accuracy"] - small["accuracy"]) if measured else None
        out["icl_accuracy"] = {r["strategy"]: r["accuracy"] for r in prompts.rows}
        out["mean_prompt_tokens"] = {r["strategy"]: r["mean_prompt_tokens"] for r in prompts.rows}
    t = report.targets
    out["targets_met"] = {
        "train_flops_ratio": _at_least(out.get("train_flops_ratio"), t.train_flops_ratio),
        "sft_flops_ratio": _at_least(out.get("sft_flops_ratio"), t.sft_flops_ratio),
        "prompt_token_ratio": _at_least(out.get("prompt_token_ratio"), t.prompt_token_ratio),
        "icl_acc_drop": None if out.get("icl_acc_drop") is None
        else out["icl_acc_drop"] <= t.icl_acc_drop_points,
    }
    return out


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _link(path: str | os.PathLike, root: Path) -> str:
    """A markdown link relative to the report's folder (absolute when outside it)."""
    path = Path(path)
    try:
        shown = path.resolve().relative_to(root.resolve())
    except ValueError:
        shown = path
    return f"[`{shown}`]({shown})"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _ratio_text(spread: dict[str, Any]) -> str:
    if spread["mean"] is None:
        return f"not reached (0/{spread['of']} seeds)"
    text = f"{spread['mean']:.2f}× ± {spread['std']:.2f} (min {spread['min']:.2f}, max {spread['max']:.2f})"
    if spread["n"] < spread["of"]:
        text += f", {spread['of'] - spread['n']} of {spread['of']} seeds never reached the target"
    return text


def _headline_table(report: SavingsReport, numbers: dict[str, Any]) -> str:
    t = report.targets
    rows: list[dict[str, Any]] = []
    for key, label, part, target in (
        ("train", "pre-training: FLOPs to reach the full-data run's final eval loss",
         report.pretraining, t.train_flops_ratio),
        ("sft", "fine-tuning: FLOPs to reach the all-data run's final eval loss",
         report.finetuning, t.sft_flops_ratio),
    ):
        if part is None:
            rows.append({"claim": label, "measured": "not measured: " + report.missing.get(
                key, "this part did not run"), "target": f">= {target:g}×", "met": None})
            continue
        rows.append({"claim": label, "measured": _ratio_text(part["savings"]["ratio"]),
                     "target": f">= {target:g}×", "met": numbers["targets_met"][f"{key}_flops_ratio"]})
    if report.prompts is None:
        why = "not measured: " + report.missing.get("prompts", "this part did not run")
        rows.append({"claim": "prompts: tokens, best uncompressed / compressed", "measured": why,
                     "target": f">= {t.prompt_token_ratio:g}×", "met": None})
        rows.append({"claim": "prompts: accuracy lost by compressing", "measured": why,
                     "target": f"<= {t.icl_acc_drop_points:g} points", "met": None})
    else:
        rows.append({"claim": "prompts: tokens, best uncompressed / compressed",
                     "measured": _x(numbers["prompt_token_ratio"]),
                     "target": f">= {t.prompt_token_ratio:g}×",
                     "met": numbers["targets_met"]["prompt_token_ratio"]})
        drop = numbers["icl_acc_drop"]
        rows.append({"claim": "prompts: accuracy lost by compressing",
                     "measured": "not measured: " + report.missing.get(
                         "icl_accuracy", "no accuracy was computed") if drop is None
                     else f"{drop:.1f} points",
                     "target": f"<= {t.icl_acc_drop_points:g} points",
                     "met": numbers["targets_met"]["icl_acc_drop"]})
    for row in rows:
        row["met"] = {True: "yes", False: "**no**", None: "-"}[row["met"]]
    return markdown_table(rows)


def _training_notes(name: str, part: dict[str, Any], target: float) -> list[str]:
    notes = []
    savings = part["savings"]
    ratio = savings["ratio"]
    if ratio["mean"] is not None and ratio["mean"] < target:
        notes.append(f"{name}: the measured saving ({ratio['mean']:.2f}×) is below the "
                     f"{target:g}× target.")
    if ratio["mean"] is not None and ratio["mean"] < 1.0:
        notes.append(f"{name}: curation cost more than it saved — the full data reached its loss "
                     "for fewer FLOPs.")
    for pair in savings["per_seed"]:
        if pair["ratio"] is None:
            notes.append(f"{name}, seed {pair['seed']}: the selected data never reached the "
                         f"baseline's final eval loss {pair['target_eval_loss']:.4f} within the "
                         f"budget (its final loss: {pair['candidate_final_eval_loss']:.4f}).")
    without = savings["ratio_without_extra"]["mean"]
    if savings["extra_flops"] and without and ratio["mean"]:
        notes.append(f"{name}: counting the selection's own {savings['extra_flops']:.3e} FLOPs "
                     f"turns {without:.2f}× into {ratio['mean']:.2f}×.")
    return notes


def _control_notes(part: dict[str, Any]) -> list[str]:
    """Did the scored subset beat the random subset of the same size (the control)?"""
    comparisons = part.get("comparisons", {})
    if "random" not in comparisons:
        return []
    losses = {arm: row["final eval loss (mean)"] for arm, row in part.get("arms_table", {}).items()}
    notes = []
    for arm in (a for a in comparisons if a != "random"):
        if losses.get(arm) is not None and losses.get("random") is not None \
                and losses[arm] >= losses["random"]:
            notes.append(f"fine-tuning: the {arm} subset ended no better than a random subset of "
                         f"the same size (eval loss {losses[arm]:.4f} vs {losses['random']:.4f}).")
    return notes


def _notes(report: SavingsReport, numbers: dict[str, Any]) -> str:
    t = report.targets
    notes: list[str] = []
    if report.pretraining is not None:
        part = report.pretraining
        notes += _training_notes("pre-training", part, t.train_flops_ratio)
        curation = part["curation"]
        full_flops = part["savings"]["budget_flops"] or 0.0
        ppl = curation.get("perplexity_step_flops")
        if ppl and full_flops:
            notes.append(
                f"pre-training: the curation used only hashing and counting steps (ledger: "
                f"{curation['flops']:.3e} model FLOPs). A perplexity step with SmolLM2-135M over "
                f"the raw corpus would cost {ppl:.3e} FLOPs — {ppl / full_flops:,.0f}× the whole "
                "full-data training budget — so at this model scale a model-based filter cannot "
                "pay for itself (Yin & Rush 2025); it pays only when the trained model is much "
                "larger than the scorer or the data is reused many times.")
        if curation.get("seconds"):
            notes.append(f"pre-training: curation took {curation['seconds']:.1f} s of wall time "
                         "on this machine (counted in seconds, not FLOPs, since hashing does no "
                         "matmuls).")
    if report.finetuning is not None:
        notes += _training_notes("fine-tuning", report.finetuning, t.sft_flops_ratio)
        notes += _control_notes(report.finetuning)
    if report.prompts is not None:
        if numbers["targets_met"]["prompt_token_ratio"] is False:
            notes.append(f"prompts: compression shortened the best prompts "
                         f"{numbers['prompt_token_ratio']:.2f}×, below the "
                         f"{t.prompt_token_ratio:g}× target.")
        if numbers["targets_met"]["icl_acc_drop"] is False:
            notes.append(f"prompts: compressing cost {numbers['icl_acc_drop']:.1f} accuracy points "
                         f"(target: at most {t.icl_acc_drop_points:g}).")
        notes += report.prompts.notes
    notes += [f"{PART_NAMES.get(part, part)}: not measured — {why}"
              for part, why in report.missing.items()]
    if not notes:
        notes.append("Every target was met in this run.")
    return "## Where curation did not help\n\n" + "\n".join(f"- {n}" for n in notes)


def _pretraining_section(part: dict[str, Any], root: Path, ctx: RunContext) -> str:
    curation = part["curation"]
    sources = sorted(set(curation["input"]["characters"]) | set(curation["kept"]["characters"]))
    composition = [{"source": s,
                    "raw docs": curation["input"]["documents"].get(s, 0),
                    "raw chars": curation["input"]["characters"].get(s, 0),
                    "kept docs": curation["kept"]["documents"].get(s, 0),
                    "kept chars": curation["kept"]["characters"].get(s, 0)} for s in sources]
    savings = part["savings"]
    runs = part["runs"]
    per_seed = []
    for pair, full, cur in zip(savings["per_seed"], runs["full"], runs["curated"], strict=True):
        per_seed.append({
            "seed": pair["seed"], "full final loss": pair["baseline_final_eval_loss"],
            "curated final loss": pair["candidate_final_eval_loss"],
            "full FLOPs to target": pair["baseline_flops"],
            "curated FLOPs to target (incl. curation)": pair["candidate_flops_with_extra"],
            "ratio": pair["ratio"],
            "ledgers": f"{_link(Path(full['run_dir']) / 'report.json', root)}, "
                       f"{_link(Path(cur['run_dir']) / 'report.json', root)}",
        })
    figure = root / "pretraining_loss_vs_flops.png"
    target = savings["baseline_final_loss"]["mean"]
    loss_vs_flops_plot(
        {"full data": part["curves"]["full"], "curated": part["curves"]["curated"]}, target, figure,
        title="Pre-training: eval loss vs training FLOPs",
        extra_flops={"curated": curation["flops"]}, caption=ctx.caption())
    cfg = part["train_config"]
    first = runs["full"][0]
    model = (f"{first['n_params']:,}-parameter Llama ({cfg['model']} preset, overrides "
             f"{cfg['model_overrides'] or 'none'}), tokenizer `{cfg['tokenizer']}`, seq_len "
             f"{cfg['seq_len']}, batch {cfg['batch_size']}, {cfg['max_steps']} steps, lr {cfg['lr']:g}")
    return "\n\n".join(s for s in [
        "## Pre-training: full vs curated data",
        f"Same model, tokenizer, seeds ({', '.join(map(str, part['seeds']))}) and FLOP budget "
        f"({savings['budget_flops']:.3e} FLOPs per run): {model}. Eval: "
        f"{part.get('eval_description') or _link(cfg.get('eval_data') or '-', root)}. "
        "The curated run repeats its smaller data "
        f"({runs['curated'][0]['epochs']:.2f} epochs vs {first['epochs']:.2f}).",
        "**Saving**: " + _ratio_text(savings["ratio"]) + " — full-run FLOPs to reach its own "
        "final eval loss ÷ curated-run FLOPs to reach it, curation FLOPs included "
        f"({curation['flops']:.3e}).",
        f"![eval loss vs FLOPs]({figure.name})\n\n*{ctx.caption()}. The dashed line is the "
        "full run's final eval loss (mean over seeds); where each curve first crosses it is the "
        "FLOPs that arm needed.*",
        "### Per seed\n\n" + markdown_table(per_seed),
        "### Data: raw mixture and what curation kept\n\n" + markdown_table(composition),
        ("### Planted problems removed (ground truth from the generator)\n\n"
         + markdown_table(curation["planted"])) if curation.get("planted") else "",
        f"### Curation ({_link(curation['manifest'], root)}: spec, removals, ledger)\n\n"
        + markdown_table(curation["steps"]),
    ] if s)


def _finetuning_section(part: dict[str, Any], root: Path, ctx: RunContext) -> str:
    savings = part["savings"]
    figure = root / "finetuning_loss_vs_flops.png"
    loss_vs_flops_plot(part["curves"], savings["baseline_final_loss"]["mean"], figure,
                       title="Fine-tuning: eval loss on clean held-out responses vs FLOPs",
                       extra_flops=part.get("extra_flops"), caption=ctx.caption())
    rows = [{"arm": arm, **dict(stats)} for arm, stats in part.get("arms_table", {}).items()]
    efficiency = (part.get("data_efficiency") or {}).get("selected")
    return "\n\n".join(s for s in [
        "## Fine-tuning: selected vs random vs all instruction data",
        part.get("description", ""),
        ("**Data efficiency** (selected vs all, training tokens and FLOPs to the all-data run's "
         "final eval loss, selection excluded): " + _ratio_text(efficiency)) if efficiency else "",
        "**Saving** (selected vs all, selection FLOPs included): " + _ratio_text(savings["ratio"]),
        f"![fine-tuning loss vs FLOPs]({figure.name})\n\n*{ctx.caption()}*",
        markdown_table(rows) if rows else "",
        _planted_table(part),
        _break_even_table(part),
        "### Selections\n\n" + markdown_table([
            {"arm": name, "steps": " → ".join(s["step"] for s in sel["steps"]),
             "rows kept": sel["rows_out"], "FLOPs": sel["flops"], "seconds": sel["seconds"],
             "manifest": _link(sel["manifest"], root) if sel["manifest"] else "-"}
            for name, sel in part.get("selections", {}).items()]) if part.get("selections") else "",
    ] if s)


def _planted_table(part: dict[str, Any]) -> str:
    """Per planted kind: rows planted and rows each selection removed (ground truth)."""
    planted = part.get("planted") or {}
    if not planted:
        return ""
    kinds = [row["kind"] for row in next(iter(planted.values()))["by_kind"]]
    rows = []
    for kind in kinds:
        row: dict[str, Any] = {"kind": kind}
        for name, result in planted.items():
            found = next(r for r in result["by_kind"] if r["kind"] == kind)
            row["rows"] = found["rows"]
            row[f"removed by {name}"] = found["removed"]
        rows.append(row)
    rows.append({"kind": "precision (planted among removed)", "rows": None,
                 **{f"removed by {n}": r["precision"] for n, r in planted.items()}})
    return ("### Planted problems removed (ground truth from the pool builder)\n\n"
            "`long_good` and `clean` rows removed are losses, not catches; a near copy counts "
            "as caught when it or its original went.\n\n" + markdown_table(rows))


def _break_even_table(part: dict[str, Any]) -> str:
    """Epochs over the pool at which each selection's scoring FLOPs are paid back."""
    table = part.get("break_even") or {}
    if not table:
        return ""
    smollm2 = part.get("smollm2_scoring")
    entries = dict(table)
    if smollm2:
        entries["selected, if scored by SmolLM2-135M"] = smollm2["break_even"]
    trainees = list(next(iter(entries.values()))["epochs"])
    rows = []
    for name, result in entries.items():
        row: dict[str, Any] = {"selection": name, "N·E at break-even": result["params_epochs"]}
        row.update({f"epochs, {t} trainee": result["epochs"][t] for t in trainees})
        row["note"] = result.get("note") or "-"
        rows.append(row)
    return ("### Break-even: when the selection pays for its scoring\n\n"
            "A trainee of N parameters trained E epochs on the pool spends 6·N·T·E FLOPs; a "
            "selection with data-efficiency ratio r saves 6·N·T·E·(1 − 1/r) and pays its scoring "
            "FLOPs S once N·E ≥ S / (6·T·(1 − 1/r)). This assumes the ratio measured on the small "
            "trainee holds for the larger one — untested here.\n\n" + markdown_table(rows))


def _prompts_section(prompts: PromptResults, root: Path, ctx: RunContext) -> str:
    figure = root / "prompts_tokens_accuracy.png"
    strategy_plot(prompts.rows, figure, caption=ctx.caption())
    return "\n\n".join([
        f"## Prompts: {prompts.task} with {prompts.model}",
        markdown_table(prompts.rows),
        f"![prompt tokens and accuracy]({figure.name})\n\n*{ctx.caption()}*",
    ])


def write_savings_report(out: str | os.PathLike, report: SavingsReport,
                         title: str = "datadiet: the saved-compute report") -> Path:
    """Write ``out/report.md`` and its PNG figures; return the report's path."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    numbers = headline_numbers(report)
    ctx = report.context
    sections = [
        f"Command: `{ctx.command}`  \nMachine: {ctx.machine}  \nData: {ctx.data}  \n"
        f"Seeds: {', '.join(map(str, ctx.seeds)) or '-'}",
        "## Savings\n\n" + _headline_table(report, numbers),
        _notes(report, numbers),
    ]
    if report.pretraining is not None:
        sections.append(_pretraining_section(report.pretraining, root, ctx))
    if report.finetuning is not None:
        sections.append(_finetuning_section(report.finetuning, root, ctx))
    if report.prompts is not None:
        sections.append(_prompts_section(report.prompts, root, ctx))
    return write_markdown(root / REPORT_FILE, title, sections)


def seeds_of(parts: Sequence[dict[str, Any] | None]) -> list[int]:
    """The seeds the training parts ran with (for the report's header)."""
    seeds: list[int] = []
    for part in parts:
        for seed in (part or {}).get("seeds", []):
            if seed not in seeds:
                seeds.append(seed)
    return seeds
