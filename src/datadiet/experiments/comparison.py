"""Full versus curated pre-training data, measured: the chain ``benchmarks/e2e.py`` and the demo run.

Build the raw mixture (:mod:`~datadiet.experiments.mixture`), curate it with datadiet's
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

from datadiet.experiments.mixture import MixtureSizes, build_mixture
from datadiet.kernels.model import LlamaConfig
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.io import MANIFEST_FILE, atomic_write_json, iter_jsonl
from datadiet.pipeline.manifest import Manifest
from datadiet.pipeline.models.tokenizer import load_tokenizer, train_bpe_tokenizer
from datadiet.pipeline.savings import eval_curve, flops_savings, train_arms
from datadiet.pipeline.stages.training import TrainConfig, load_text_dataset
from datadiet.pipeline.steps import build_step

__all__ = [
    "PretrainSettings",
    "curation_spec",
    "planted_caught",
    "prepare_tokenizer",
    "pretraining_comparison",
    "small_train_config",
    "summarize_pretraining",
]


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

    The tokenizer defaults to bytes; :func:`pretraining_comparison` swaps in the one its settings
    ask for (a small BPE fitted to the raw corpus by default), so the output layer stays small
    and the FLOPs go into the layers. ``quick`` is the ``tiny`` preset (d 64, 2 layers) for 100
    steps; the full run a d-192, 6-layer model for 300 steps.
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


def prepare_tokenizer(kind: str, corpus: str | os.PathLike, folder: str | os.PathLike,
                      vocab_size: int = 1024) -> str:
    """The tokenizer both arms share: ``"bytes"``, or ``"bpe"`` — a byte-level BPE fitted to
    the *raw* corpus (never to the curated one, which would favour it) — or a folder/id as is."""
    if kind != "bpe":
        return kind
    texts = (str(r.get("text") or "") for r in iter_jsonl(corpus))
    return str(train_bpe_tokenizer(texts, vocab_size, folder))


@dataclass
class PretrainSettings:
    """What one pre-training comparison runs.

    ``tokenizer="bpe"`` (the default) fits a 1,024-token BPE to the raw corpus; ``"bytes"``
    trains on UTF-8 bytes, where the early training is spelling that every English source
    shares and the arms differ less.
    """

    sizes: MixtureSizes = field(default_factory=MixtureSizes)
    train: TrainConfig = field(default_factory=lambda: small_train_config(quick=False))
    seeds: Sequence[int] = (0, 1, 2)
    dsir_keep: float = 0.3
    data_seed: int = 0
    tokenizer: str = "bpe"
    bpe_vocab: int = 1024

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


def planted_caught(raw: Sequence[dict], kept_ids: set[str]) -> list[dict[str, Any]]:
    """How many planted problems curation removed, scored against the generator's ground truth.

    A duplicate group (an original and its planted copies) is handled right when exactly one
    member survives — which one does not matter, since dedup keeps the first it meets — so a
    group's copies count as caught up to the number of its members removed. Junk counts as
    caught when removed.
    """
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for record in raw:
        if record.get("source_id"):
            groups[record["source_id"]].append(record)
    rows = []
    for kind in ("exact", "near"):
        planted = caught = 0
        for members in groups.values():
            copies = sum(r.get("planted") == kind for r in members)
            if copies:
                planted += copies
                caught += min(copies, sum(str(r["id"]) not in kept_ids for r in members))
        rows.append({"planted": f"{kind} copies", "count": planted, "removed": caught})
    junk = [r for r in raw if str(r.get("planted", "")).startswith("junk")]
    rows.append({"planted": "junk", "count": len(junk),
                 "removed": sum(str(r["id"]) not in kept_ids for r in junk)})
    return [r for r in rows if r["count"]]


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
        "config": report["config"],
        "ledger_total": report["ledger"]["total"],
    }


def summarize_pretraining(
    corpus: str | os.PathLike,
    curated_dir: str | os.PathLike,
    full_reports: Sequence[dict],
    curated_reports: Sequence[dict],
    spec: Any = None,
) -> dict[str, Any]:
    """The comparison's summary from what the runs left on disk (the flows call this too).

    ``corpus`` is the raw JSONL; ``curated_dir`` a ``datadiet curate`` output (its manifest's
    ledger prices the curation); the reports come in seed order, paired by index. Where the raw
    records carry a ``source`` field, the summary also says how much of each source was kept.
    """
    curated_dir = Path(curated_dir)
    manifest = Manifest.load(curated_dir / MANIFEST_FILE)
    curation_total = manifest.ledger.get("total", {})
    curation_flops = float(curation_total.get("flops", 0.0))
    if str(corpus).endswith(".jsonl"):
        raw = list(iter_jsonl(corpus))
    else:  # any other format: ids and texts as the curation read them, no per-source split
        raw = load_text_dataset(corpus).select_columns(["id", "text"]).to_list()
    kept_ids = set(load_text_dataset(curated_dir)["id"])
    source = [str(r.get("source", "all")) for r in raw]
    kept = [i for i, r in enumerate(raw) if str(r.get("id")) in kept_ids]
    first = full_reports[0]
    return {
        "spec": spec if spec is not None else manifest.spec,
        "curation": {
            "out": str(curated_dir),
            "manifest": str(curated_dir / MANIFEST_FILE),
            "rows_in": manifest.input.get("rows"),
            "rows_out": manifest.steps[-1].rows_out if manifest.steps else len(kept_ids),
            "steps": [{"step": s.name, "rows_in": s.rows_in, "rows_out": s.rows_out,
                       "seconds": s.seconds, "flops": s.flops,
                       "removed": ", ".join(f"{k}={v}" for k, v in s.removed.items()) or "-"}
                      for s in manifest.steps],
            "flops": curation_flops,
            "seconds": float(curation_total.get("seconds", 0.0)),
            "kept": _by_source([source[i] for i in kept], [raw[i]["text"] for i in kept]),
            "input": _by_source(source, [r["text"] for r in raw]),
            "perplexity_step_flops": perplexity_step_flops([r["text"] for r in raw]),
            "planted": planted_caught(raw, kept_ids),
        },
        "train_config": first["config"],
        "seeds": [r["config"]["seed"] for r in full_reports],
        "runs": {"full": [_run_summary(r) for r in full_reports],
                 "curated": [_run_summary(r) for r in curated_reports]},
        "curves": {"full": [eval_curve(r) for r in full_reports],
                   "curated": [eval_curve(r) for r in curated_reports]},
        "savings": flops_savings(full_reports, curated_reports, curation_flops),
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
    the curated dataset with ``.datadiet/manifest.json`` (spec, per-step removals, the curation ledger);
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
    curate_path(mixture.corpus, steps, curated_dir, keep_fields=["source", "planted"],
                overwrite=True, show_progress=False)
    evaluation = load_text_dataset(mixture.eval)
    tokenizer = prepare_tokenizer(settings.tokenizer, mixture.corpus, out / "tokenizer",
                                  settings.bpe_vocab)
    config = settings.train.model_copy(update={"tokenizer": tokenizer})

    def on_run(arm: str, seed: int, report: dict) -> None:
        say(f"trained {arm} seed {seed}: final eval loss {report['final_eval_loss']:.4f} "
            f"in {report['wall_seconds']:.0f}s")

    say("training full vs curated")
    arms = {"full": load_text_dataset(mixture.corpus), "curated": load_text_dataset(curated_dir)}
    reports = train_arms(arms, config,
                         settings.seeds, out / "runs", eval_dataset=evaluation, on_run=on_run)
    summary = summarize_pretraining(mixture.corpus, curated_dir, reports["full"],
                                    reports["curated"], spec=spec)
    summary["mixture"] = mixture.to_dict()
    summary["eval_description"] = (
        "WikiText-2 test paragraphs, spread over the whole file (never seen by any step; the "
        "DSIR target is a WikiText-2 valid sample disjoint from the corpus)")
    atomic_write_json(out / "pretraining.json", summary)
    return summary
