"""Full versus curated pre-training data, measured: the chain ``benchmarks/e2e.py`` and the demo run.

Build the raw mixture (:mod:`~datadiet.pipeline.demo.mixture`), curate it with datadiet's
steps (exact and near dedup, quality rules, DSIR towards a WikiText-2 sample), then train the
same small Llama on the full corpus and on the curated one — same tokenizer, same seeds, same
FLOP budget — evaluating on WikiText-2 *test*, and compare the FLOPs each needed to reach the
full run's final eval loss, with the curation's FLOPs on the curated side
(:func:`~datadiet.pipeline.savings.flops_savings`).

Why these curation steps and not the perplexity filter: every step here is hashing and counting
(zero model FLOPs), whereas scoring the corpus with SmolLM2-135M costs ``2·N_params`` FLOPs per
token, thousands of times what training a few-million-parameter model on it costs. The summary
states that cost (``perplexity_step_flops``) so the reader sees why it was left out at this
scale — the case where selection does not pay.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datadiet.kernels.model import LlamaConfig
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.demo.mixture import MixtureSizes, build_mixture
from datadiet.pipeline.io import atomic_write_json, iter_jsonl
from datadiet.pipeline.manifest import Manifest
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.pipeline.savings import eval_curve, flops_savings, train_arms
from datadiet.pipeline.stages.training import TrainConfig, load_text_dataset
from datadiet.pipeline.steps import build_step

__all__ = ["PretrainSettings", "curation_spec", "pretraining_comparison", "small_train_config"]


def curation_spec(target: str | os.PathLike, keep: float = 0.3) -> list[dict[str, dict]]:
    """The pre-training spec: cheap exact steps first, then DSIR towards the target sample."""
    return [
        {"exact_dedup": {}},
        {"minhash_dedup": {"threshold": 0.7, "num_perm": 128, "ngram": 5}},
        {"quality": {}},
        {"dsir": {"target": str(target), "keep": keep}},
    ]


def small_train_config(quick: bool, threads: int | None = 1, **overrides: Any) -> TrainConfig:
    """The model and budget both arms share: a byte-level Llama, trained from scratch on CPU.

    Bytes as tokens keep the output layer small (257 ids instead of SmolLM2's 49 152), so the
    FLOPs go into the layers, and the tokenizer is identical for both arms by construction.
    ``quick`` is the ~0.1M-parameter ``tiny`` preset for 100 steps; the full run a 2.7M-parameter
    model (d 192, 6 layers) for 300 steps.
    """
    model = {} if quick else {"d_model": 192, "n_layers": 6, "n_heads": 6, "n_kv_heads": 2,
                              "d_ff": 512}
    settings: dict[str, Any] = dict(
        tokenizer="bytes", model="tiny", model_overrides=model, seq_len=128, batch_size=16,
        max_steps=100 if quick else 300, lr=3e-3, warmup_steps=10, min_lr_ratio=0.1,
        eval_every=5 if quick else 10, max_eval_blocks=48 if quick else 96, log_every=50,
        checkpoint_every=0, save_model=False, device="cpu", num_threads=threads,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@dataclass
class PretrainSettings:
    """What one pre-training comparison runs."""

    sizes: MixtureSizes = field(default_factory=MixtureSizes)
    train: TrainConfig = field(default_factory=lambda: small_train_config(quick=False))
    seeds: Sequence[int] = (0, 1, 2)
    dsir_keep: float = 0.3
    data_seed: int = 0

    @classmethod
    def quick(cls, seeds: Sequence[int] = (0, 1, 2)) -> PretrainSettings:
        return cls(sizes=MixtureSizes.quick(), train=small_train_config(quick=True), seeds=seeds)


def _by_source(sources: Sequence[str], texts: Sequence[str]) -> dict[str, dict[str, int]]:
    """Documents and characters per source (which data set a row came from)."""
    docs: collections.Counter = collections.Counter()
    chars: collections.Counter = collections.Counter()
    for source, text in zip(sources, texts, strict=True):
        docs[source] += 1
        chars[source] += len(text)
    return {"documents": dict(docs), "characters": dict(chars)}


def perplexity_step_flops(texts: Sequence[str], max_tokens: int = 512) -> float:
    """What the perplexity step (SmolLM2-135M, first ``max_tokens`` tokens) would cost on ``texts``.

    Counted, not run: the tokens with SmolLM2's tokenizer, the FLOPs with the ledger's formula.
    """
    tokenizer = load_tokenizer(None)
    tokens = sum(min(len(ids), max_tokens)
                 for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    return LlamaConfig.preset("smollm2-135m").shape().flops(tokens, max_tokens, training=False)


def _run_summary(report: dict) -> dict[str, Any]:
    """The parts of a training report the comparison keeps (no full loss curve per step)."""
    return {
        "seed": report["config"]["seed"],
        "run_dir": report.get("run_dir"),
        "final_eval_loss": report["final_eval_loss"],
        "flops_per_step": report["flops_per_step"],
        "total_steps": report["total_steps"],
        "n_params": report["n_params"],
        "epochs": report["data"]["epochs"],
        "train_tokens_available": report["data"]["tokens"],
        "wall_seconds": report.get("wall_seconds"),
        "flops_at_eval_loss": report["flops_at_eval_loss"],
        "config": {"seed": report["config"]["seed"]},
        "ledger_total": report["ledger"]["total"],
    }


def pretraining_comparison(
    out: str | os.PathLike,
    data: Path | None,
    settings: PretrainSettings,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build, curate, train both arms for every seed, compare; everything lands under ``out``.

    ``out/mixture/`` holds the raw corpus, the DSIR target and the eval set; ``out/curated/``
    the curated dataset with ``manifest.json`` (spec, per-step removals, the curation ledger);
    ``out/runs/{full,curated}/seed-N/report.json`` each run's ledger and curves. Returns a
    JSON-able summary: data composition, curation cost, per-run summaries, eval curves and the
    per-seed savings.
    """
    say = progress or (lambda message: None)
    out = Path(out)
    say("building the raw corpus")
    mixture = build_mixture(out / "mixture", data, settings.sizes, seed=settings.data_seed)
    spec = curation_spec(mixture.target, settings.dsir_keep)
    steps = [build_step(name, params) for entry in spec for name, params in entry.items()]
    say("curating")
    curated_dir = out / "curated"
    result = curate_path(mixture.corpus, steps, curated_dir, keep_fields=["source", "planted"],
                         overwrite=True, show_progress=False)
    manifest: Manifest = result.manifest
    curation_total = manifest.ledger.get("total", {})
    curation_flops = float(curation_total.get("flops", 0.0))
    full = load_text_dataset(mixture.corpus)
    curated = load_text_dataset(curated_dir)
    evaluation = load_text_dataset(mixture.eval)

    def on_run(arm: str, seed: int, report: dict) -> None:
        say(f"trained {arm} seed {seed}: final eval loss {report['final_eval_loss']:.4f} "
            f"in {report['wall_seconds']:.0f}s")

    say("training full vs curated")
    reports = train_arms({"full": full, "curated": curated}, settings.train, settings.seeds,
                         out / "runs", eval_dataset=evaluation, on_run=on_run)
    savings = flops_savings(reports["full"], reports["curated"], curation_flops)
    summary = {
        "mixture": mixture.to_dict(),
        "spec": spec,
        "curation": {
            "out": str(curated_dir),
            "manifest": str(curated_dir / "manifest.json"),
            "rows_in": manifest.input.get("rows"),
            "rows_out": len(result.dataset),
            "steps": [{"step": s.name, "rows_in": s.rows_in, "rows_out": s.rows_out,
                       "seconds": s.seconds, "flops": s.flops,
                       "removed": ", ".join(f"{k}={v}" for k, v in s.removed.items()) or "-"}
                      for s in manifest.steps],
            "flops": curation_flops,
            "seconds": float(curation_total.get("seconds", 0.0)),
            "kept": _by_source(result.dataset["source"], result.dataset["text"]),
            "input": _by_source(*zip(*((r["source"], r["text"]) for r in iter_jsonl(mixture.corpus)),
                                     strict=True)),
            "perplexity_step_flops": perplexity_step_flops(full["text"]),
        },
        "train_config": settings.train.model_dump(),
        "seeds": list(settings.seeds),
        "runs": {arm: [_run_summary(r) for r in runs] for arm, runs in reports.items()},
        "curves": {arm: [eval_curve(r) for r in runs] for arm, runs in reports.items()},
        "savings": savings,
    }
    atomic_write_json(out / "pretraining.json", summary)
    return summary
