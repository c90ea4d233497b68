"""Fine-tuning selection, measured: all rows vs the selected rows vs a random subset of that size.

The fine-tuning stage of the ``efficiency`` flow, ``datadiet demo`` and ``benchmarks/e2e.py``.
An instruction pool (by default the planted pool of :mod:`~datadiet.experiments.sft_pool`) is
curated with a fine-tuning spec, and the same base model is fine-tuned on all rows, on the
selected rows and on a seeded random subset of the same size (plus any other methods asked for)
— same tokenizer (the base's), seeds and step budget. Eval loss is the loss of *clean held-out
responses* given their prompts (:func:`~datadiet.pipeline.stages.training.pack_pairs`).

Two accounts, kept apart (Yin & Rush 2025: leaving the selection out flatters it):

* **data efficiency** — training tokens and FLOPs each arm needed to reach the all-data run's
  final eval loss, selection excluded;
* **the selection's price** — the scoring FLOPs from the curation ledger, and the *break-even*:
  for a trainee of ``N`` parameters trained ``E`` epochs on the pool, training costs
  ``6·N·T·E`` (``T`` pool tokens), and a selection that reaches the same loss with ``1/r`` of the
  compute saves ``6·N·T·E·(1 - 1/r)``; it pays for its scoring FLOPs ``S`` once
  ``N·E >= S / (6·T·(1 - 1/r))``. The table assumes the measured ``r`` carries over to the larger
  trainee — an assumption the small runs here cannot test, and the report says so.

Training: one block per pair (the prompt's tail, the response, an end-of-text token), the loss
on the response only, as supervised fine-tuning usually runs (``response_only``; ``False`` packs
``prompt + newline + response`` as plain text with every token a target). Every arm pays the
same FLOPs per step (full blocks, padding included), so FLOPs ratios are step ratios.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset

from datadiet.experiments.sft_pool import PLANTED_KINDS, planted_removed
from datadiet.kernels.model import LlamaConfig
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.io import MANIFEST_FILE, atomic_write_json, iter_jsonl
from datadiet.pipeline.manifest import Manifest
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.pipeline.savings import eval_curve, flops_savings, spread, train_arms
from datadiet.pipeline.stages.training import TrainConfig, flops_to_reach, pack_pairs, train
from datadiet.pipeline.steps import build_step

__all__ = [
    "BREAK_EVEN_TRAINEES",
    "DEFAULT_SFT_SPEC",
    "FinetuneSettings",
    "break_even",
    "finetuning_comparison",
    "finetuning_stage",
    "oracle_selection",
    "pretrain_base",
    "removal_precision",
    "sft_train_config",
    "smollm2_scoring_flops",
]

#: The default fine-tuning spec, chosen from the measurements in docs/finetuning.md: free rules
#: (echoes, non-answers, cut-off answers), then near-duplicate rows. No model FLOPs.
DEFAULT_SFT_SPEC: list[dict[str, dict]] = [
    {"response_rules": {}},
    {"minhash_dedup": {"threshold": 0.85, "num_perm": 128, "ngram": 5}},
]
#: Trainee sizes of the break-even table (parameters).
BREAK_EVEN_TRAINEES = {"135M": 135e6, "1B": 1e9, "7B": 7e9, "70B": 70e9}


@dataclass
class FinetuneSettings:
    """What one fine-tuning comparison runs (``train.init_from`` is set to the base model).

    ``methods`` adds arms beside ``selected`` and ``random`` (benchmarks compare several
    selectors on one pool): name → a function of ``k`` that returns the spec, ``k`` being the
    rows ``selected`` kept, so a ranking method gets the same budget. ``random`` always draws
    ``k`` rows. With the pool's ground truth, an ``oracle`` arm (the planted rows removed) is the
    ceiling of any selection (``oracle=False`` leaves it out).
    """

    train: TrainConfig
    seeds: Sequence[int] = (0, 1, 2)
    data_seed: int = 0
    methods: dict[str, Callable[[int], list[dict[str, dict]]]] = field(default_factory=dict)
    response_only: bool = True
    #: with a ground truth, also train the ``oracle`` arm (:func:`oracle_selection`)
    oracle: bool = True


def pretrain_base(out: str | os.PathLike, corpus: Any, config: TrainConfig) -> Path:
    """Train the small base model the arms fine-tune from; returns its ``model/`` folder.

    ``corpus`` is anything the trainer reads (a JSONL path, a curated folder, a ``Dataset``).
    An existing ``out/model`` is reused: the base is an input to the comparison, not part of it.
    """
    folder = Path(out) / "model"
    if not (folder / "config.json").is_file():
        train(config.model_copy(update={"save_model": True, "checkpoint_every": 0}), out,
              dataset=corpus, resume=False)
    return folder


def _kept_ids(curated: Path) -> set[str]:
    """Ids of the rows a ``datadiet curate`` output kept (its data shards, not ``removed/``)."""
    return {str(i) for shard in sorted(curated.glob("data-*.parquet"))
            for i in pq.read_table(shard, columns=["id"]).column("id").to_pylist()}


def _as_text(rows: Sequence[dict[str, Any]]) -> Dataset:
    """The training text of a pair: prompt, newline, completion (what the eval conditions on)."""
    return Dataset.from_dict({"id": [r["id"] for r in rows],
                              "text": [f"{r['prompt']}\n{r['completion']}" for r in rows]})


def removal_precision(truth: dict[str, Any], kept_ids: set[str]) -> dict[str, Any]:
    """Planted rows among the removed ones (near copies by the group rule of
    :func:`~datadiet.experiments.sft_pool.planted_removed`), and the per-kind table."""
    table = planted_removed(truth, kept_ids)
    removed = sum(1 for i in truth["kinds"] if i not in kept_ids)
    caught = sum(r["removed"] for r in table if r["kind"] in PLANTED_KINDS)
    planted = sum(r["planted"] for r in table)
    return {"removed": removed, "planted_removed": caught, "planted": planted,
            "precision": caught / removed if removed else None,
            "recall": caught / planted if planted else None,
            "expected_random_precision": planted / len(truth["kinds"]),
            "by_kind": table}


def _select(name: str, spec: list[dict[str, dict]], pool: Path, out: Path) -> dict[str, Any]:
    """Run one spec on the pool; kept ids and what the selection cost (from its ledger)."""
    steps = [build_step(step, params) for entry in spec for step, params in entry.items()]
    result = curate_path(pool, steps, out / name, overwrite=True, show_progress=False)
    manifest: Manifest = result.manifest
    total = manifest.ledger.get("total", {})
    return {"spec": spec, "out": str(out / name), "manifest": str(out / name / MANIFEST_FILE),
            "kept": _kept_ids(out / name), "flops": float(total.get("flops", 0.0)),
            "scored_tokens": int(total.get("tokens", 0)),
            "seconds": float(total.get("seconds", 0.0)),
            "steps": [{"step": s.name, "rows_in": s.rows_in, "rows_out": s.rows_out,
                       "removed": ", ".join(f"{k}={v}" for k, v in s.removed.items()) or "-",
                       "flops": s.flops, "seconds": round(s.seconds, 2)}
                      for s in manifest.steps]}


def oracle_selection(truth: dict[str, Any]) -> dict[str, Any]:
    """The ``oracle`` arm: every planted row removed by the ground truth, nothing else (a near
    copy goes, its original stays).

    Why an arm that no user can run: it is the ceiling of any selection on this pool and
    trainee. When even the oracle does not reach the all-data run's loss sooner, the trainee
    still gains from any tokens (it learns the responses' words, not yet their fit to the
    instruction), and no selector can pay on it — the measurement, not the selector, is then
    what limits the figure.
    """
    kept = {row_id for row_id, kind in truth["kinds"].items() if kind not in PLANTED_KINDS}
    return {"spec": "ground truth: planted rows removed", "out": None, "manifest": None,
            "kept": kept, "flops": 0.0, "scored_tokens": 0, "seconds": 0.0, "steps": []}


def _tokens_to_target(report: dict, target: float) -> float | None:
    """Training tokens a run had seen when its eval loss first reached ``target``."""
    flops = flops_to_reach(report, target)
    if flops is None:
        return None
    tokens_per_step = report["config"]["batch_size"] * report["config"]["seq_len"] \
        * report["config"].get("grad_accum", 1)
    return flops / report["flops_per_step"] * tokens_per_step


def _efficiency(baseline: Sequence[dict], candidate: Sequence[dict]) -> dict[str, Any]:
    """Per seed, training tokens to the all-data run's final loss: all / candidate (no selection)."""
    ratios = []
    for base, cand in zip(baseline, candidate, strict=True):
        target = base["final_eval_loss"]
        ours, theirs = _tokens_to_target(cand, target), _tokens_to_target(base, target)
        ratios.append(theirs / ours if ours and theirs else None)
    return spread(ratios)


def break_even(selection_flops: float, pool_tokens: int, ratio: float | None) -> dict[str, Any]:
    """Trainee size × epochs at which the selection's FLOPs are paid back (module docstring).

    ``ratio`` is the data-efficiency ratio (selection excluded). Returns ``params_epochs`` (the
    product ``N·E`` at break-even; ``0`` for a free selection, ``None`` where the selection
    saves nothing) and the break-even epochs for each trainee of :data:`BREAK_EVEN_TRAINEES`.
    """
    if ratio is None or ratio <= 1.0:
        return {"params_epochs": None, "epochs": {k: None for k in BREAK_EVEN_TRAINEES},
                "note": "the selection reached the all-data loss no sooner: it never pays"}
    params_epochs = selection_flops / (6.0 * pool_tokens * (1.0 - 1.0 / ratio))
    return {"params_epochs": params_epochs,
            "epochs": {k: params_epochs / n for k, n in BREAK_EVEN_TRAINEES.items()},
            "note": "free selection: pays at any size" if selection_flops == 0 else ""}


def smollm2_scoring_flops(pool_rows: Sequence[dict]) -> float:
    """What an IFD / Superfiltering pass of SmolLM2-135M over the pool would cost, counted (not
    run): every prompt token once and every response token twice (with and without its
    instruction), by the ledger's inference formula — the price a model-based spec would add."""
    tokenizer = load_tokenizer(None)
    prompts = tokenizer([r["prompt"] for r in pool_rows], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r["completion"] for r in pool_rows], add_special_tokens=False)["input_ids"]
    tokens = sum(len(p) for p in prompts) + 2 * sum(len(a) for a in answers)
    return LlamaConfig.preset("smollm2-135m").shape().flops(tokens, 512, training=False)


def finetuning_comparison(
    out: str | os.PathLike,
    pool: str | os.PathLike,
    eval_pairs: str | os.PathLike,
    base_model: str | os.PathLike,
    spec: list[dict[str, dict]],
    settings: FinetuneSettings,
    *,
    truth: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Select, fine-tune every arm for every seed, compare; everything lands under ``out``.

    ``pool`` and ``eval_pairs`` are JSONL files of ``{id, prompt, completion}``; ``truth`` the
    pool's ground truth (:func:`~datadiet.experiments.sft_pool.build_sft_pool`), when known.
    Returns (and writes to ``out/finetuning.json``) a summary the report renders.
    """
    say = progress or (lambda message: None)
    out, pool = Path(out), Path(pool)
    rows = list(iter_jsonl(pool))
    held_out = list(iter_jsonl(eval_pairs))
    known = json.loads(Path(truth).read_text(encoding="utf-8")) if truth else None
    say(f"fine-tuning data: selecting with {len(spec)} step(s)")
    selections = {"selected": _select("selected", spec, pool, out / "selections")}
    k = len(selections["selected"]["kept"])
    random_spec = [{"random": {"keep": k, "seed": settings.data_seed}}]
    selections["random"] = _select("random", random_spec, pool, out / "selections")
    for name, method_spec in settings.methods.items():
        say(f"fine-tuning data: selecting with {name}")
        selections[name] = _select(name, method_spec(k), pool, out / "selections")
    if known is not None and settings.oracle:
        selections["oracle"] = oracle_selection(known)
    tokenizer = load_tokenizer(base_model)
    config = settings.train.model_copy(update={
        "init_from": str(base_model), "tokenizer": None,
        "max_eval_blocks": max(settings.train.max_eval_blocks, len(held_out))})  # every pair

    def arm_data(subset: list[dict]) -> Any:
        if not settings.response_only:
            return _as_text(subset)
        return pack_pairs([r["prompt"] for r in subset], [r["completion"] for r in subset],
                          tokenizer, config.seq_len)

    arms = {"all": arm_data(rows)}
    arms.update({name: arm_data([r for r in rows if str(r["id"]) in sel["kept"]])
                 for name, sel in selections.items()})
    evaluation = pack_pairs([r["prompt"] for r in held_out], [r["completion"] for r in held_out],
                            tokenizer, config.seq_len)

    def on_run(arm: str, seed: int, report: dict) -> None:
        say(f"fine-tuned {arm} seed {seed}: final eval loss {report['final_eval_loss']:.4f} "
            f"in {report['wall_seconds']:.0f}s")

    say(f"fine-tuning {len(arms)} arms x {len(settings.seeds)} seeds")
    reports = train_arms(arms, config, settings.seeds, out / "runs", eval_dataset=evaluation,
                         on_run=on_run)
    pool_tokens = sum(len(ids) for ids in tokenizer(
        [f"{r['prompt']}\n{r['completion']}" for r in rows], add_special_tokens=False)["input_ids"])
    summary = _summarize(rows, held_out, base_model, spec, settings, config, selections, reports,
                         known, pool_tokens)
    smollm2 = smollm2_scoring_flops(rows)
    summary["smollm2_scoring"] = {"flops": smollm2, "break_even": break_even(
        smollm2, pool_tokens, summary["break_even_ratio"])}
    atomic_write_json(out / "finetuning.json", summary)
    return summary


def _summarize(rows: list[dict], held_out: list[dict], base_model: Any, spec: list,
               settings: FinetuneSettings, config: TrainConfig, selections: dict[str, dict],
               reports: dict[str, list[dict]], truth: dict | None,
               pool_tokens: int) -> dict[str, Any]:
    """The JSON summary: arms table, savings, data efficiency, break-even, planted removals."""
    extra = {name: sel["flops"] for name, sel in selections.items()}
    comparisons = {name: flops_savings(reports["all"], reports[name], extra.get(name, 0.0))
                   for name in reports if name != "all"}
    efficiency = {name: _efficiency(reports["all"], reports[name]) for name in comparisons}
    removal = {name: removal_precision(truth, sel["kept"]) for name, sel in selections.items()} \
        if truth else {}
    first = reports["all"][0]
    table = {}
    for arm, runs in reports.items():
        losses = spread([r["final_eval_loss"] for r in runs])
        row = {"rows": len(rows) if arm == "all" else len(selections[arm]["kept"]),
               "final eval loss (mean)": losses["mean"], "spread (std)": losses["std"]}
        other = arm != "all"  # every row has every column (the table takes the first's)
        row.update({
            "tokens/FLOPs to all's loss, ratio (no selection)":
                efficiency[arm]["mean"] if other else 1.0,
            "seeds reaching all's loss": f"{comparisons[arm]['reached']}/{len(runs)}"
            if other else "-",
            "selection FLOPs": extra[arm] if other else 0.0,
            "FLOPs ratio incl. selection": comparisons[arm]["ratio"]["mean"] if other else 1.0})
        if removal:
            row["precision at removing planted rows"] = removal[arm]["precision"] \
                if other else None
        table[arm] = row
    ratio = efficiency["selected"]["mean"]
    return {
        "description": (
            f"Base model: `{base_model}` ({first['n_params']:,} parameters). Pool: {len(rows)} "
            f"instruction rows; eval: {len(held_out)} clean held-out pairs, loss on the "
            "responses only (prompts masked). `selected` is the fine-tuning spec; `random` "
            "draws as many rows; every arm trains "
            f"{config.steps_for(1)} steps from the same base with the same seeds, so a smaller "
            "subset is repeated more often."),
        "spec": spec,
        "seeds": list(settings.seeds),
        "pool_rows": len(rows),
        "pool_tokens": pool_tokens,
        "eval_pairs": len(held_out),
        "selections": {name: {k: v for k, v in sel.items() if k != "kept"}
                       | {"rows_out": len(sel["kept"])} for name, sel in selections.items()},
        "train_config": config.model_dump(),
        "runs": {arm: [{"seed": r["config"]["seed"], "run_dir": r.get("run_dir"),
                        "final_eval_loss": r["final_eval_loss"],
                        "n_params": r["n_params"], "epochs": r["data"]["epochs"]}
                       for r in runs] for arm, runs in reports.items()},
        "curves": {arm: [eval_curve(r) for r in runs] for arm, runs in reports.items()},
        "extra_flops": {name: f for name, f in extra.items() if f},
        "savings": comparisons["selected"],
        "comparisons": comparisons,
        "data_efficiency": efficiency,
        "break_even": {name: break_even(extra[name], pool_tokens, efficiency[name]["mean"])
                       for name in comparisons},
        "break_even_ratio": ratio,
        "planted": removal,
        "arms_table": table,
    }


def sft_train_config(budget: TrainConfig, steps: int, lr: float | None = None) -> TrainConfig:
    """The fine-tuning budget from a pre-training one: same model shape, batch and window,
    ``steps`` steps (an eval every twentieth of them), no checkpoints, no model saved."""
    return budget.model_copy(update={
        "max_steps": steps, "max_tokens": None, "eval_every": max(1, steps // 20),
        "warmup_steps": min(budget.warmup_steps, max(1, steps // 10)),
        "lr": lr if lr is not None else budget.lr, "save_model": False, "checkpoint_every": 0,
        "data": None, "eval_data": None})


def finetuning_stage(
    out: str | os.PathLike,
    pool: str | os.PathLike,
    eval_pairs: str | os.PathLike,
    spec: list[dict[str, dict]],
    budget: TrainConfig,
    *,
    steps: int,
    base: str | os.PathLike | None = None,
    base_corpus: Any = None,
    truth: str | os.PathLike | None = None,
    seeds: Sequence[int] = (0,),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The efficiency chain's fine-tuning stage, one call: the base model (``base``, or the
    budget's model pre-trained on ``base_corpus`` into ``out/base``), then
    :func:`finetuning_comparison` with ``steps`` fine-tuning steps per arm."""
    out = Path(out)
    if base is None:
        if base_corpus is None:
            raise ValueError("fine-tuning stage: give a base model or a corpus to pre-train one")
        (progress or (lambda message: None))("pre-training the fine-tuning base")
        base = pretrain_base(out / "base", base_corpus, budget)
    settings = FinetuneSettings(train=sft_train_config(budget, steps), seeds=tuple(seeds))
    return finetuning_comparison(out, pool, eval_pairs, base, spec, settings, truth=truth,
                                 progress=progress)
