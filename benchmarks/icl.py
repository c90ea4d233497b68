"""ICL demonstrations: which selection strategy and ordering win on SST-2 and TREC with SmolLM2.

Claim under test: the best demonstration strategy beats random demonstrations by >= 8 accuracy
points on both SST-2 and TREC (k = 4, SmolLM2-135M-Instruct, the same test subset for every
configuration), and whether demonstrations beat zero-shot at all with a 135M model.

Every strategy x ordering is run (plus zero-shot), each with and without contextual calibration
(both from one pass: the content-free queries share the prompt's cached prefix), over 3 seeds.
Configurations that no seed can change (a deterministic strategy with ``as_selected`` or
``similar_last`` order) run once and show a spread of 0. One preset template per task type
(``sentiment``, ``question``); nothing is tuned per data set.

    python benchmarks/icl.py --quick      # a few minutes on 2 cores
    python benchmarks/icl.py              # 300 test rows per data set, 3 seeds (hours on CPU)

The last printed line is JSON: per data set ``zero_shot``, ``random``, ``best_strategy``,
``best_accuracy`` (and the gain over random in points).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datadiet.pipeline.models.embedding import Embedder  # noqa: E402
from datadiet.prompting.demos import ORDERINGS, STRATEGIES, DemoSelector, preset  # noqa: E402
from datadiet.prompting.icl import (  # noqa: E402
    ICLEvaluator,
    fixed_subset,
    macro_f1,
    read_labelled_lines,
)

DATA = Path(os.environ.get("DATADIET_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
DATASETS = {
    "sst2": ("icl/sst2/train.txt", "icl/sst2/test.txt", "sentiment", ["0", "1"]),
    "trec": ("icl/trec/train.txt", "icl/trec/test.txt", "question",
             ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]),
}


@dataclass
class Config:
    n_test: int
    pool: int | None
    seeds: list[int]
    grid: list[tuple[str, str]]
    probes: int
    max_orderings: int
    k: int = 4


def make_config(args: argparse.Namespace) -> Config:
    strategies = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    orderings = args.orderings.split(",") if args.orderings else list(ORDERINGS)
    if args.quick:
        grid = [(s, o) for s in strategies for o in ("as_selected", "similar_last") if o in orderings]
        grid += [("knn", o) for o in ("random", "globale", "locale") if o in orderings]
        return Config(args.n_test or 8, args.pool or 500, [0], grid, probes=3, max_orderings=4)
    grid = [(s, o) for s in strategies for o in orderings]
    seeds = list(range(args.seeds))
    return Config(args.n_test or 300, args.pool, seeds, grid, probes=args.probes or 8,
                  max_orderings=args.max_orderings or 24)


def seed_matters(strategy: str, ordering: str) -> bool:
    return strategy == "random" or ordering in ("random", "globale", "locale")


def run_dataset(name: str, cfg: Config, evaluator_cache: dict, embedder: Embedder) -> list[dict]:
    train_path, test_path, template_name, labels = DATASETS[name]
    pool = read_labelled_lines(DATA / train_path)
    test = read_labelled_lines(DATA / test_path)
    if cfg.pool and cfg.pool < len(pool):
        pool = pool.subset(fixed_subset(len(pool), cfg.pool))
    test = test.subset(fixed_subset(len(test), cfg.n_test))
    template = preset(template_name, labels)
    scorer = evaluator_cache.get("scorer")
    evaluator = ICLEvaluator(template, scorer=scorer, embedder=embedder)
    evaluator_cache["scorer"] = evaluator.scorer
    rows: list[dict] = []

    def record(strategy: str, ordering: str, seed: int, pred, seconds: float) -> None:
        for calibrated in (False, True):
            scores = pred.scores if calibrated else pred.raw
            guess = [evaluator.labels[j] for j in scores.argmax(axis=1)]
            rows.append({
                "data": name, "strategy": strategy, "order": ordering, "calibrated": calibrated,
                "seed": seed, "accuracy": float(np.mean([g == y for g, y in zip(guess, test.labels, strict=True)])),
                "macro_f1": macro_f1(test.labels, guess, evaluator.labels),
                "prompt_tokens": float(np.mean(pred.prompt_tokens)), "seconds": seconds,
            })

    start = time.perf_counter()
    zero = evaluator.predict(test.texts, [[]] * len(test), calibrate=True)
    record("zero-shot", "-", 0, zero, time.perf_counter() - start)
    log(name, "zero-shot", rows[-2]["accuracy"], rows[-1]["accuracy"], rows[-1]["seconds"])
    strategies = list(dict.fromkeys(s for s, _ in cfg.grid))
    for strategy in strategies:
        orderings = [o for s, o in cfg.grid if s == strategy]
        selector = None
        for seed in cfg.seeds:
            if selector is None or strategy == "random":
                selector = DemoSelector(strategy, cfg.k, template=template, embedder=embedder,
                                        count_tokens=evaluator.scorer.count_tokens, seed=seed)
                selector.fit(pool.texts, pool.labels)
            t0 = time.perf_counter()
            demos = selector.select_batch(test.texts)
            select_seconds = time.perf_counter() - t0
            probe_cache: dict = {}
            for ordering in orderings:
                if seed != cfg.seeds[0] and not seed_matters(strategy, ordering):
                    continue
                t1 = time.perf_counter()
                orderer = evaluator.orderer(ordering, pool.texts, probes=cfg.probes, seed=seed,
                                            max_orderings=cfg.max_orderings, probe_cache=probe_cache)
                ordered = orderer.order_batch(demos, test.texts)
                pred = evaluator.predict(test.texts, ordered, calibrate=True)
                seconds = select_seconds + time.perf_counter() - t1
                record(strategy, ordering, seed, pred, seconds)
                log(name, f"{strategy}+{ordering} seed {seed}", rows[-2]["accuracy"],
                    rows[-1]["accuracy"], seconds)
    return rows


def log(name: str, what: str, raw: float, calibrated: float, seconds: float) -> None:
    print(f"[{name}] {what}: accuracy {raw:.3f} (calibrated {calibrated:.3f}) {seconds:.1f}s",
          file=sys.stderr, flush=True)


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["strategy"], r["order"], r["calibrated"]), []).append(r)
    out = []
    for (data, strategy, order, calibrated), rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs])
        out.append({"data": data, "strategy": strategy, "order": order, "calibrated": calibrated,
                    "accuracy": float(acc.mean()), "spread": float(acc.max() - acc.min()),
                    "std": float(acc.std()), "macro_f1": float(np.mean([r["macro_f1"] for r in rs])),
                    "prompt_tokens": float(np.mean([r["prompt_tokens"] for r in rs])),
                    "seconds": float(np.mean([r["seconds"] for r in rs])), "runs": len(rs)})
    return out


def markdown(summary: list[dict], n_test: dict[str, int]) -> str:
    lines = []
    for data in dict.fromkeys(s["data"] for s in summary):
        lines += [f"\n{data} ({n_test[data]} test rows; accuracy mean over seeds, spread = max - min)\n",
                  "| strategy | order | accuracy | calibrated | spread | macro-F1 (cal.) | prompt tokens | seconds | runs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = [s for s in summary if s["data"] == data and not s["calibrated"]]
        cal = {(s["strategy"], s["order"]): s for s in summary if s["data"] == data and s["calibrated"]}
        for s in sorted(rows, key=lambda s: -max(s["accuracy"], cal[(s["strategy"], s["order"])]["accuracy"])):
            c = cal[(s["strategy"], s["order"])]
            lines.append(f"| {s['strategy']} | {s['order']} | {s['accuracy']:.3f} | {c['accuracy']:.3f} | "
                         f"{max(s['spread'], c['spread']):.3f} | {c['macro_f1']:.3f} | "
                         f"{s['prompt_tokens']:.0f} | {s['seconds']:.1f} | {s['runs']} |")
    return "\n".join(lines)


def headline(summary: list[dict]) -> dict:
    out: dict = {}
    for data in dict.fromkeys(s["data"] for s in summary):
        rows = [s for s in summary if s["data"] == data]
        zero = next(s for s in rows if s["strategy"] == "zero-shot" and not s["calibrated"])
        zero_cal = next(s for s in rows if s["strategy"] == "zero-shot" and s["calibrated"])
        random = next((s for s in rows if s["strategy"] == "random" and s["order"] == "as_selected"
                       and not s["calibrated"]), None)
        few = [s for s in rows if s["strategy"] != "zero-shot"]
        best = max(few, key=lambda s: s["accuracy"])
        name = f"{best['strategy']}+{best['order']}" + ("+calibrated" if best["calibrated"] else "")
        out[data] = {
            "zero_shot": round(zero["accuracy"], 4),
            "zero_shot_calibrated": round(zero_cal["accuracy"], 4),
            "random": None if random is None else round(random["accuracy"], 4),
            "best_strategy": name,
            "best_accuracy": round(best["accuracy"], 4),
            "gain_over_random_points": None if random is None
            else round(100 * (best["accuracy"] - random["accuracy"]), 1),
            "demos_beat_zero_shot": bool(best["accuracy"] > max(zero["accuracy"], zero_cal["accuracy"])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rows, one seed, a reduced grid")
    parser.add_argument("--n-test", type=int, default=None, help="test rows per data set")
    parser.add_argument("--pool", type=int, default=None, help="subsample the pool to this size")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default=None, help="comma-separated subset")
    parser.add_argument("--orderings", default=None, help="comma-separated subset")
    parser.add_argument("--datasets", default="sst2,trec")
    parser.add_argument("--probes", type=int, default=None, help="GlobalE/LocalE probes (8)")
    parser.add_argument("--max-orderings", type=int, default=None,
                        help="GlobalE/LocalE candidate orderings (24 = all of k=4)")
    parser.add_argument("--rows-out", default=None, help="write every run's row as JSONL here")
    args = parser.parse_args()
    cfg = make_config(args)
    embedder = Embedder()
    cache: dict = {}
    rows: list[dict] = []
    n_test = {}
    started = time.perf_counter()
    for name in args.datasets.split(","):
        rows += run_dataset(name, cfg, cache, embedder)
        n_test[name] = min(cfg.n_test, len(read_labelled_lines(DATA / DATASETS[name][1])))
    if args.rows_out:
        Path(args.rows_out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(rows)
    print(markdown(summary, n_test))
    result = headline(summary)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["config"] = {"k": cfg.k, "n_test": cfg.n_test, "pool": cfg.pool, "seeds": cfg.seeds,
                        "probes": cfg.probes, "max_orderings": cfg.max_orderings,
                        "quick": bool(args.quick)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
