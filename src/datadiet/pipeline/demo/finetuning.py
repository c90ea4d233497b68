"""Instruction data, measured: fine-tune on an IFD subset vs a random subset vs all of it.

The fine-tuning half of ``benchmarks/e2e.py``. A pool of T0 rows (prompt, completion) is
curated two ways with the same budget rule — ``ifd`` (Instruction-Following Difficulty, Li et
al. 2023, scored by the *base model itself*, as Cherry LLM does) and ``random`` — and the same
base model is fine-tuned on all rows, on the IFD subset and on the random subset: same
tokenizer, seeds and FLOP budget. Eval loss is the loss of held-out T0 *responses* given their
prompts (:func:`~datadiet.pipeline.stages.training.pack_pairs`), on rows disjoint from the pool
and from the pre-training mixture.

The saving is counted as in pre-training: the all-data run's FLOPs to reach its final eval loss
over the IFD run's FLOPs to reach it **plus the IFD scoring FLOPs** from the curation ledger
(two forward passes over every pool row). The random subset is the control: a subset that
reaches the target no sooner than random rows did not earn its scoring cost.

Training: the pair is one text (prompt, newline, completion) and every token is a target, as in
plain packed fine-tuning; only the evaluation masks the prompt.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset

from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.io import MANIFEST_FILE, atomic_write_json, atomic_write_text
from datadiet.pipeline.manifest import Manifest
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.pipeline.savings import eval_curve, flops_savings, spread, train_arms
from datadiet.pipeline.stages.training import TrainConfig, pack_pairs
from datadiet.pipeline.steps import build_step

__all__ = ["FinetuneSettings", "finetuning_comparison", "t0_pairs"]

END_OF_TEXT = "<|endoftext|>"
#: Rows of each T0 template file: the pre-training mixture takes the first 40 of every file
#: (:mod:`~datadiet.pipeline.demo.mixture`), the pool the next 60, evaluation the 20 after.
POOL_ROWS, EVAL_ROWS = slice(40, 100), slice(100, 120)


@dataclass
class FinetuneSettings:
    """What one fine-tuning comparison runs (``train.init_from`` is set to the base model)."""

    train: TrainConfig
    pool: int = 2000
    eval_pairs: int = 200
    keep: float = 0.25
    seeds: Sequence[int] = (0, 1, 2)
    ifd_max_length: int = 256
    data_seed: int = 0
    arms: tuple[str, ...] = field(default=("all", "ifd", "random"))

    @classmethod
    def quick(cls, train: TrainConfig, seeds: Sequence[int] = (0, 1, 2)) -> FinetuneSettings:
        return cls(train=train, pool=400, eval_pairs=80, seeds=seeds)


def t0_pairs(folder: Path, rows: slice, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` (prompt, completion) rows drawn across every T0 template, from ``rows`` of each."""
    candidates = []
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            lines = f.read().splitlines()[rows]
        for k, line in enumerate(lines):
            record = json.loads(line)
            candidates.append({
                "id": f"{path.stem}-{rows.start + k}",
                "prompt": record["prompt"].rstrip(),
                "completion": record["completion"].replace(END_OF_TEXT, "").strip(),
            })
    candidates = [c for c in candidates if c["completion"]]
    return random.Random(seed).sample(candidates, min(n, len(candidates)))


def _kept_ids(curated: Path) -> set[str]:
    """Ids of the rows a ``datadiet curate`` output kept (its data shards, not the removed rows)."""
    return {str(i) for shard in sorted(curated.glob("data-*.parquet"))
            for i in pq.read_table(shard, columns=["id"]).column("id").to_pylist()}


def _as_text(rows: Sequence[dict[str, Any]]) -> Dataset:
    """The training text of a pair: prompt, newline, completion (what the eval conditions on)."""
    return Dataset.from_dict({"id": [r["id"] for r in rows],
                              "text": [f"{r['prompt']}\n{r['completion']}" for r in rows]})


def finetuning_comparison(
    out: str | os.PathLike,
    data: Path,
    base_model: str | os.PathLike,
    settings: FinetuneSettings,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Select, fine-tune every arm for every seed, compare; everything lands under ``out``."""
    say = progress or (lambda message: None)
    out = Path(out)
    folder = data / "sft" / "t0_train"
    pool = t0_pairs(folder, POOL_ROWS, settings.pool, settings.data_seed)
    held_out = t0_pairs(folder, EVAL_ROWS, settings.eval_pairs, settings.data_seed)
    pool_path = out / "pool.jsonl"
    atomic_write_text(pool_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool))
    atomic_write_text(out / "eval.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held_out))
    specs = {
        "ifd": [{"ifd": {"keep": settings.keep, "model": str(base_model),
                         "max_length": settings.ifd_max_length, "cache": False}}],
        "random": [{"random": {"keep": settings.keep, "seed": settings.data_seed}}],
    }
    selections: dict[str, dict[str, Any]] = {}
    arms: dict[str, Dataset] = {"all": _as_text(pool)}
    for name in settings.arms:
        if name == "all":
            continue
        say(f"fine-tuning data: selecting with {name}")
        steps = [build_step(step, params) for entry in specs[name] for step, params in entry.items()]
        result = curate_path(pool_path, steps, out / name, overwrite=True, show_progress=False)
        manifest: Manifest = result.manifest
        kept = _kept_ids(out / name)
        arms[name] = _as_text([r for r in pool if r["id"] in kept])
        total = manifest.ledger.get("total", {})
        selections[name] = {"out": str(out / name), "manifest": str(out / name / MANIFEST_FILE),
                            "rows_in": len(pool), "rows_out": len(kept),
                            "flops": float(total.get("flops", 0.0)),
                            "seconds": float(total.get("seconds", 0.0)), "spec": specs[name]}
    config = settings.train.model_copy(update={
        "init_from": str(base_model), "tokenizer": None,
        "max_eval_blocks": max(settings.train.max_eval_blocks, len(held_out))})  # every pair
    evaluation = pack_pairs([r["prompt"] for r in held_out], [r["completion"] for r in held_out],
                            load_tokenizer(base_model), config.seq_len)

    def on_run(arm: str, seed: int, report: dict) -> None:
        say(f"fine-tuned {arm} seed {seed}: final eval loss {report['final_eval_loss']:.4f} "
            f"in {report['wall_seconds']:.0f}s")

    say("fine-tuning every arm")
    reports = train_arms(arms, config, settings.seeds, out / "runs", eval_dataset=evaluation,
                         on_run=on_run)
    extra = {name: sel["flops"] for name, sel in selections.items()}
    comparisons = {name: flops_savings(reports["all"], reports[name], extra.get(name, 0.0))
                   for name in reports if name != "all"}
    summary = {
        "description": (
            f"Base model: `{base_model}` (the pre-training part's full-data run, seed "
            f"{settings.data_seed}). Pool: {len(pool)} T0 rows across all templates; eval: "
            f"{len(held_out)} held-out T0 rows, loss on the responses only (prompts masked). "
            f"Subsets keep {settings.keep:g} of the pool; `ifd` is scored by the base model "
            "itself and its scoring FLOPs (curation ledger) are added to its side. Every arm "
            f"trains {config.steps_for(1)} steps from the same base, same seeds."),
        "seeds": list(settings.seeds),
        "selections": selections,
        "train_config": config.model_dump(),
        "curves": {arm: [eval_curve(r) for r in runs] for arm, runs in reports.items()},
        "extra_flops": extra,
        "savings": comparisons["ifd"] if "ifd" in comparisons else next(iter(comparisons.values())),
        "comparisons": comparisons,
        "arms_table": {arm: {
            "rows": len(arms[arm]),
            "final eval loss (mean)": spread([r["final_eval_loss"] for r in runs])["mean"],
            "spread (std)": spread([r["final_eval_loss"] for r in runs])["std"],
            "selection FLOPs": extra.get(arm, 0.0),
            "FLOPs ratio vs all (mean)": comparisons[arm]["ratio"]["mean"] if arm in comparisons else None,
            "seeds reaching all's loss": (f"{comparisons[arm]['reached']}/{len(runs)}"
                                          if arm in comparisons else "-"),
        } for arm, runs in reports.items()},
    }
    atomic_write_json(out / "finetuning.json", summary)
    return summary
