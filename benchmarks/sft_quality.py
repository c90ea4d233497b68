"""Benchmark: do the fine-tuning selectors remove planted bad rows better than random?

Claim: on real T0 instruction rows with a quarter of them spoiled, the best of datadiet's
fine-tuning selection methods removes spoiled rows with at least twice random's precision
(``best_vs_random`` >= 2) when each method removes exactly as many rows as were planted.

Spoiled rows (equal shares, each a real T0 row changed in one way):

* ``swapped``: the response of another row (another task), so it answers the wrong question;
* ``truncated``: the response cut mid-sentence, about 40% of its words kept (rows with 8+ words);
* ``copy``: the response replaced by the instruction itself;
* ``generic``: the response replaced by a generic non-answer ("I'm not sure. ...").

Methods, each keeping ``1 - rate`` of the rows:

* ``ifd``: Cherry IFD (``max_ifd=1`` drops rows whose instruction does not help, the rest ranked);
* ``judge``: SmolLM2 as judge, expected rating over "1".."6";
* ``relevance``: the response's mean loss under 3 other rows' instructions minus under its own
  (domain-conditional PMI, Holtzman et al. 2021; chat template, end-of-turn token scored); the
  least relevant rows removed;
* ``relevance+ifd``: ``relevance`` as a filter (``keep=1.0``: it drops only the rows whose own
  instruction helps no more than others', relevance <= 0), then Cherry IFD ranks the rest and
  removes the remainder of the planted count (as a user would chain them; ``max_ifd`` is off
  because relevance is the stronger "the instruction does not help" test, and so that the chain
  removes exactly the planted count — unless the filter alone removes more, which ``removed``
  would show);
* ``deita``: the IFD scores, then DEITA's diverse walk (cosine <= 0.9) down them;
* ``cluster_sample``: balanced k-means strata of the embeddings, random within;
* ``random``: a seeded uniform draw (its expected precision is the planted rate).

``precision`` = spoiled rows among the removed / removed rows. The scorer model is the offline
default (SmolLM2-135M-Instruct), the embedder all-MiniLM-L6-v2. Scores go through the score
cache in a temporary folder (or ``--cache``), so ``deita`` reuses ``ifd``'s scores (as a user's
second run would); ``seconds`` of a method whose scores came from the cache exclude scoring.

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(
    os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
GENERIC = [
    "I'm not sure. Could you please provide more details?",
    "I don't know the answer to that.",
    "That is a good question. There are many possible answers.",
    "Sorry, I cannot help with that request.",
]
KINDS = ("swapped", "truncated", "copy", "generic")


def clean_rows(n: int, seed: int) -> list[dict]:
    """``n`` real T0 rows from a seeded draw over all templates (short prompts, real answers)."""
    pool = []
    for name in sorted(glob.glob(str(DATA / "sft" / "t0_train" / "*.jsonl"))):
        with open(name, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    answer = r["completion"].replace("<|endoftext|>", "").strip()
                    if len(r["prompt"]) <= 600 and answer:
                        pool.append({"prompt": r["prompt"], "completion": r["completion"],
                                     "task": Path(name).stem})
    rng = random.Random(seed)
    rng.shuffle(pool)
    rows, seen = [], set()
    for r in pool:  # distinct prompts, at most a few rows per task
        if r["prompt"] in seen or sum(x["task"] == r["task"] for x in rows) >= 3:
            continue
        seen.add(r["prompt"])
        rows.append(r)
        if len(rows) == n:
            break
    return rows


def plant(rows: list[dict], rate: float, seed: int) -> tuple[list[dict], np.ndarray]:
    """Spoil ``rate`` of the rows in equal shares of :data:`KINDS`; returns rows and kind per row."""
    rng = random.Random(seed)
    n = len(rows)
    n_bad = round(rate * n)
    rows = [dict(r) for r in rows]
    kinds = np.full(n, "", dtype=object)
    long_answers = [i for i, r in enumerate(rows) if len(r["completion"].split()) >= 8]
    order = list(range(n))
    rng.shuffle(order)
    per_kind = [n_bad // len(KINDS) + (i < n_bad % len(KINDS)) for i in range(len(KINDS))]
    truncatable = [i for i in order if i in set(long_answers)]
    chosen: dict[str, list[int]] = {"truncated": truncatable[: per_kind[1]]}
    rest = [i for i in order if i not in set(chosen["truncated"])]
    chosen["swapped"] = rest[: per_kind[0]]
    chosen["copy"] = rest[per_kind[0] : per_kind[0] + per_kind[2]]
    chosen["generic"] = rest[per_kind[0] + per_kind[2] : per_kind[0] + per_kind[2] + per_kind[3]]
    originals = [r["completion"] for r in rows]
    for kind, idx in chosen.items():
        for i in idx:
            kinds[i] = kind
            if kind == "swapped":
                j = next(j for j in rng.sample(range(n), n) if rows[j]["task"] != rows[i]["task"])
                rows[i]["completion"] = originals[j]
            elif kind == "truncated":
                words = originals[i].replace("<|endoftext|>", "").split()
                rows[i]["completion"] = " ".join(words[: max(1, int(len(words) * 0.4))])
            elif kind == "copy":
                rows[i]["completion"] = rows[i]["prompt"]
            else:
                rows[i]["completion"] = rng.choice(GENERIC) + "<|endoftext|>"
    return rows, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 rows")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None,
                        help="score cache folder (default: a new temporary one); scores of an "
                             "earlier run are reused, as a user's second run would")
    args = parser.parse_args()
    if args.cache:
        measure(args, args.cache)
        return
    with tempfile.TemporaryDirectory(prefix="sft-quality-cache-") as scratch:
        measure(args, scratch)  # the scratch cache goes with the run


def measure(args: argparse.Namespace, cache: str) -> None:
    """Plant bad rows, run every method with the score cache in ``cache``, print the JSON."""
    n = args.rows or (48 if args.quick else 400)

    from datasets import Dataset

    from datadiet.pipeline.curate import curate
    from datadiet.pipeline.steps import StepContext

    rows, kinds = plant(clean_rows(n, args.seed), args.rate, args.seed)
    planted = kinds != ""
    n_bad = int(planted.sum())
    keep = n - n_bad
    ds = Dataset.from_list([{"id": f"r{i}", **r} for i, r in enumerate(rows)])
    specs = {
        "ifd": [{"ifd": {"keep": keep, "cache": cache}}],
        "judge": [{"judge": {"keep": keep, "cache": cache}}],
        "relevance": [{"relevance": {"keep": keep, "min_relevance": None, "cache": cache}}],
        "relevance+ifd": [{"relevance": {"keep": 1.0, "cache": cache}},
                          {"ifd": {"keep": keep, "max_ifd": None, "cache": cache}}],
        "deita": [{"ifd": {"keep": 1.0, "cache": cache}},
                  {"deita": {"keep": keep, "score": "ifd_score", "threshold": 0.9}}],
        "cluster_sample": [{"cluster_sample": {"keep": keep, "strategy": "balanced",
                                               "seed": args.seed}}],
        "random": [{"random": {"keep": keep, "seed": args.seed}}],
    }
    ctx = StepContext(show_progress=False, seed=args.seed)
    precision, recall_by_kind, seconds, removed_counts = {}, {}, {}, {}
    for method, spec in specs.items():
        t0 = time.perf_counter()
        result = curate(ds, spec, ctx=ctx)
        seconds[method] = round(time.perf_counter() - t0, 2)
        removed = np.asarray(result.removed.column("input_row").to_pylist(), dtype=np.int64)
        removed_counts[method] = int(len(removed))
        hits = planted[removed]
        precision[method] = round(float(hits.mean()) if len(removed) else 0.0, 3)
        recall_by_kind[method] = {k: int((kinds[removed] == k).sum()) for k in KINDS}
        print(f"{method:15s} removed {len(removed):4d}  precision {precision[method]:.3f}  "
              f"caught {recall_by_kind[method]}  {seconds[method]:.1f}s", flush=True)
    best = max((m for m in precision if m != "random"), key=precision.get)
    random_expected = n_bad / n
    result = {
        "rows": n, "planted": n_bad, "rate": args.rate,
        "planted_by_kind": {k: int((kinds == k).sum()) for k in KINDS},
        "precision": precision,
        "caught_by_kind": recall_by_kind,
        "removed": removed_counts,
        "seconds": seconds,
        "best": best,
        "random_expected_precision": round(random_expected, 3),
        "best_vs_random": round(precision[best] / random_expected, 2),
        "target": {"best_vs_random": 2.0},
        "met": bool(precision[best] >= 2 * random_expected),
        "ledger_tokens": ctx.ledger.total.tokens,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
