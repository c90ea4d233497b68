"""Benchmark: which fine-tuning selection removes the planted bad rows of a realistic pool?

Claim: on the planted instruction pool (:mod:`datadiet.experiments.sft_pool`: real T0 rows,
GSM8K worked answers, and 30 % planted problems — near-duplicate instructions, swapped,
truncated, generic and restated responses, off-topic prose rows), the best method removes
planted rows with at least 3x random's precision and the default fine-tuning spec
(``DEFAULT_SFT_SPEC``: ``response_rules`` → ``minhash_dedup``) with at least 2.5x.

``precision`` = planted rows among the removed rows (a near copy counts when it or its original
went, once per pair); random's expected precision is the planted share. Filters (rules, dedup,
the default spec) remove what they flag; ranking methods (random, longest, ifd, Superfiltering,
relevance → ifd, deita, judge) remove exactly as many rows as were planted. Model methods use the
offline SmolLM2-135M-Instruct scorer (``--scorer`` for another, e.g. a smaller model folder:
Superfiltering's point) through one score cache, so ``deita`` and ``superfiltering`` reuse the
``ifd`` losses (their ``seconds`` exclude scoring, as a user's second run would).

``--quick``: 120 rows, the model-free methods only. Full: 400 rows, every method (tens of
minutes on two shared cores). The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

DATA = Path(
    os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
TARGETS = {"best_vs_random": 3.0, "default_vs_random": 2.5}


def method_specs(keep: int, cache: str, scorer: str | None, seed: int,
                 models: bool) -> dict[str, list]:
    """Every method as a spec; ``keep`` is the ranking methods' budget (rows minus planted)."""
    from datadiet.experiments.finetuning import DEFAULT_SFT_SPEC

    specs: dict[str, list] = {
        "random": [{"random": {"keep": keep, "seed": seed}}],
        "longest": [{"longest": {"keep": keep}}],
        "dedup (minhash 0.85)": [DEFAULT_SFT_SPEC[1]],
        "response_rules": [DEFAULT_SFT_SPEC[0]],
        "default: rules → dedup": DEFAULT_SFT_SPEC,
    }
    if models:
        model = {"model": scorer} if scorer else {}
        specs.update({
            "ifd": [{"ifd": {"keep": keep, "cache": cache, **model}}],
            "superfiltering (ppl ratio)": [{"ifd": {"keep": keep, "ratio": "ppl",
                                                    "max_ifd": None, "cache": cache, **model}}],
            "relevance → ifd": [{"relevance": {"keep": 1.0, "cache": cache, **model}},
                                {"ifd": {"keep": keep, "max_ifd": None, "cache": cache,
                                         **model}}],
            "deita": [{"ifd": {"keep": 1.0, "cache": cache, **model}},
                      {"deita": {"keep": keep, "score": "ifd_score", "threshold": 0.9}}],
            "judge": [{"judge": {"keep": keep, "cache": cache, **model}}],
            "default → ifd": [*DEFAULT_SFT_SPEC,
                              {"ifd": {"keep": keep, "cache": cache, **model}}],
        })
    return specs


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    """Build the pool, run every method, score each against the ground truth."""
    from datasets import Dataset

    from datadiet.experiments.finetuning import removal_precision
    from datadiet.experiments.sft_pool import PoolMix, build_sft_pool
    from datadiet.pipeline.curate import curate
    from datadiet.pipeline.steps import StepContext

    n = args.rows or (120 if args.quick else 400)
    files = build_sft_pool(scratch / "pool", DATA, PoolMix(rows=n, eval_rows=8, seed=args.seed))
    truth = json.loads(files.truth.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in files.pool.read_text(encoding="utf-8").splitlines()]
    planted = sum(1 for k in truth["kinds"].values() if k not in ("clean", "long_good"))
    cache = str(args.cache or scratch / "cache")
    specs = method_specs(n - planted, cache, args.scorer, args.seed, models=not args.quick)
    ds = Dataset.from_list(rows)
    ctx = StepContext(show_progress=False, seed=args.seed)
    results = {}
    for method, spec in specs.items():
        started = time.perf_counter()
        flops_before = ctx.ledger.total.flops
        result = curate(ds, spec, ctx=ctx)
        removed = set(result.removed.column("id").to_pylist())
        score = removal_precision(truth, {r["id"] for r in rows} - removed)
        score.update(seconds=round(time.perf_counter() - started, 1),
                     flops=ctx.ledger.total.flops - flops_before)
        results[method] = score
        caught = {r["kind"]: r["removed"] for r in score["by_kind"]}
        print(f"{method:28s} removed {score['removed']:4d}  precision "
              f"{score['precision'] or 0:.3f}  {caught}  {score['seconds']:.1f}s", flush=True)
    expected = planted / n
    ratio = {m: round((r["precision"] or 0.0) / expected, 2) for m, r in results.items()}
    best = max((m for m in results if m != "random"), key=ratio.get)
    default = "default: rules → dedup"
    return {
        "benchmark": "sft_quality", "quick": args.quick, "rows": n, "planted": planted,
        "planted_by_kind": {k: v for k, v in truth["counts"].items()},
        "random_expected_precision": round(expected, 3),
        "precision": {m: r["precision"] for m, r in results.items()},
        "recall": {m: r["recall"] for m, r in results.items()},
        "vs_random": ratio,
        "removed_by_kind": {m: {r["kind"]: r["removed"] for r in res["by_kind"]}
                            for m, res in results.items()},
        "seconds": {m: r["seconds"] for m, r in results.items()},
        "scoring_flops": {m: r["flops"] for m, r in results.items()},
        "best": best, "best_vs_random": ratio[best], "default_vs_random": ratio[default],
        "targets": TARGETS,
        "met": {"best_vs_random": ratio[best] >= TARGETS["best_vs_random"],
                "default_vs_random": ratio[default] >= TARGETS["default_vs_random"]},
        "scorer": args.scorer or "SmolLM2-135M-Instruct (offline default)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="120 rows, model-free methods")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorer", default=None, help="LM for the model methods (default: "
                        "the offline SmolLM2-135M-Instruct)")
    parser.add_argument("--cache", default=None, help="score cache folder (default: a "
                        "temporary one); an earlier run's scores are reused")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sft-quality-") as scratch:
        result = measure(args, Path(scratch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
