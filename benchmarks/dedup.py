"""Near-duplicate removal: datadiet vs datasketch vs rensa, on real text with planted duplicates.

The claim: datadiet's MinHash + LSH dedup (``minhash_dedup``) is much faster than the standard
Python tool (datasketch) and at least as fast as a Rust one (rensa), while finding the planted
near duplicates (pairwise F1 of the clustering against ground truth).

Corpus: paragraphs of WikiText-2 (valid + test), Sherlock Holmes paragraphs, Tiny Shakespeare
passages and T0 prompts, all from ../shared/data. The base corpus is first cleaned of its own
near duplicates (exact Jaccard >= 0.5, found by prefix filtering, so the cleaning misses
nothing) — T0 in particular repeats passages under several templates — so that the only
duplicates are the planted ones, whose ground truth is known. Each planted variant is an
original with word substitutions, insertions, deletions, truncation, appended words, a mix, or
only case and spacing changed; it is accepted only if its true shingle-set Jaccard with the
original is >= ``--min-jaccard`` (0.85, above the 0.8 threshold; the JSON reports the median).
Ground truth clusters = original + its variants; the score is pair-counting F1 of "same
cluster" (variants of one original count as a pair even when they are further apart).

All three pipelines use the same shingles (word 5-grams of ``datadiet.pipeline.text.words``),
``num_perm`` and threshold, and the same union-find at the end; each runs end to end from texts
(shingling, signatures, LSH, clustering):

* datadiet: the ``minhash_dedup`` step with its defaults on a ``datasets.Dataset`` (the
  user-facing path: Arrow reads, memory-mapped signatures, verification of candidate pairs,
  a Selection with ids). Runs the C kernels (built by ``make install``).
* datasketch: ``MinHash.bulk`` over shingle byte strings (its default hash and scheme), a
  ``MinHashLSH`` filled in an ``insertion_session`` and queried per document.
* rensa: ``RMinHash.from_token_sets`` over shingle strings, ``RMinHashLSH.insert_many`` and
  ``query_all`` (bands: the divisor of ``num_perm`` with the least weighted S-curve error).

Where the difference comes from: the JSON's ``*_signatures_s`` time the signature kernels
alone on the same precomputed shingle hashes, and there datadiet and rensa's Rust are on par.
The end-to-end gap is in tokenising and shingling, which the other two pipelines do in Python
(``words()`` plus one joined string per shingle, as their APIs take tokens) and datadiet does
in one compiled pass over the UTF-8 bytes without building any string.

Timings are the best of ``--repeats`` interleaved rounds after one warm-up on a small slice
(which pays one-time costs such as imports and lookup tables, for every library alike).
datadiet's C kernels run on all cores (``kernel_threads`` in the JSON; ``DATADIET_THREADS=1``
for a one-thread run); datasketch runs in one thread, rensa as its
batch calls do. The machine
may be shared, so absolute numbers move; the ratios come from the same rounds, and CPU-time
ratios (``*_cpu``) are reported beside the wall-time ones as the steadier figure.

Usage: ``python benchmarks/dedup.py [--quick]``; the last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import StepContext
from datadiet.pipeline.text import words
from datadiet.selectors import native
from datadiet.selectors.minhash import (
    MinHashDedup,
    _s_curve_errors,
    connected_components,
)

DATA = Path(os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# ----------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------


def _wikitext_paragraphs() -> list[str]:
    out = []
    for name in ("wikitext2_valid.txt", "wikitext2_test.txt"):
        for line in (DATA / "lm" / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("="):
                out.append(line)
    return out


def _blank_line_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [" ".join(b.split()) for b in re.split(r"\n\s*\n", text) if b.strip()]


def _shakespeare_passages(target_words: int = 120) -> list[str]:
    out, cur, n = [], [], 0
    for block in _blank_line_blocks(DATA / "lm" / "tinyshakespeare.txt"):
        cur.append(block)
        n += len(block.split())
        if n >= target_words:
            out.append(" ".join(cur))
            cur, n = [], 0
    return out


def _t0_prompts() -> list[str]:
    out = []
    for path in sorted((DATA / "sft" / "t0_train").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line)["prompt"])
    return out


def _shingle_sets(texts: list[str], ngram: int) -> list[frozenset[str]]:
    sets = []
    for t in texts:
        w = words(t)
        n = len(w)
        starts = range(n - ngram + 1) if n >= ngram else range(min(n, 1))
        sets.append(frozenset(" ".join(w[i : i + ngram]) for i in starts))
    return sets


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_free(sets: list[frozenset[str]], max_jaccard: float) -> np.ndarray:
    """Indices of a subset of docs with no pair at Jaccard >= ``max_jaccard`` (exact).

    Prefix filtering (Chaudhuri et al. 2006): with shingles ordered rarest first, two sets with
    Jaccard >= t must share one of the first ``|A| - ceil(t*|A|) + 1`` shingles of each, so
    pairs that share such a prefix shingle are the only candidates to check exactly.
    """
    vocab: dict[str, int] = {}
    doc_ids = [[vocab.setdefault(s, len(vocab)) for s in st] for st in sets]
    freq = np.zeros(len(vocab), np.int64)
    for ids in doc_ids:
        freq[ids] += 1
    post_tok, post_doc = [], []
    for d, ids in enumerate(doc_ids):
        if not ids:
            continue
        arr = np.array(ids, np.int64)
        arr = arr[np.lexsort((arr, freq[arr]))]
        p = len(arr) - int(np.ceil(max_jaccard * len(arr))) + 1
        post_tok.append(arr[:p])
        post_doc.append(np.full(p, d, np.int64))
    tok = np.concatenate(post_tok)
    doc = np.concatenate(post_doc)
    order = np.lexsort((doc, tok))
    tok, doc = tok[order], doc[order]
    cand = set()
    start = 0
    for end in np.flatnonzero(np.r_[tok[1:] != tok[:-1], True]) + 1:
        group = doc[start:end]
        if len(group) > 1:
            g = group.tolist()
            for i in range(len(g)):
                for j in range(i + 1, len(g)):
                    cand.add((g[i], g[j]))
        start = end
    drop = set()
    for i, j in sorted(cand):
        if i in drop or j in drop:
            continue
        if _jaccard(sets[i], sets[j]) >= max_jaccard:
            drop.add(j)
    return np.array([i for i in range(len(sets)) if i not in drop and sets[i]], np.int64)


def _variant(words_: list[str], vocab: list[str], rng: random.Random, strength: float) -> str:
    """One edited copy of a document; ``strength`` in (0, 1] scales how much is changed."""
    w = list(words_)
    kind = rng.choice(["substitute", "insert", "delete", "truncate", "append", "mixed", "case"])
    k = max(1, int(round(strength * len(w) * 0.04)))
    if kind in ("substitute", "mixed"):
        for _ in range(k):
            w[rng.randrange(len(w))] = rng.choice(vocab)
    if kind in ("insert", "mixed"):
        for _ in range(k):
            w.insert(rng.randrange(len(w) + 1), rng.choice(vocab))
    if kind == "delete":
        for _ in range(min(k, len(w) - 1)):
            del w[rng.randrange(len(w))]
    if kind == "truncate":
        cut = max(1, int(round(len(w) * strength * 0.12)))
        w = w[: max(1, len(w) - cut)]
    if kind == "append":
        w = w + [rng.choice(vocab) for _ in range(max(1, int(len(w) * strength * 0.1)))]
    if kind == "case":  # exact duplicate up to case and spacing
        return "  ".join(x.upper() if rng.random() < 0.2 else x for x in w)
    return " ".join(w)


def build_corpus(
    n_target: int, dup_fraction: float, min_jaccard: float, ngram: int, seed: int
) -> tuple[list[str], np.ndarray, dict]:
    """Texts (shuffled) and their ground-truth cluster labels (smallest member index)."""
    rng = random.Random(seed)
    doyle = [b for b in _blank_line_blocks(DATA / "lm" / "doyle_adventures.txt") if len(b.split()) >= 10]
    sources = {
        "wikitext2": _wikitext_paragraphs(),
        "doyle": doyle,
        "shakespeare": _shakespeare_passages(),
        "t0": _t0_prompts(),
    }
    pool: list[str] = []
    for name in ("wikitext2", "doyle", "shakespeare", "t0"):
        docs = [d for d in sources[name] if len(words(d)) >= 10]
        pool.extend(docs)
    rng.shuffle(pool)
    n_base_target = int(n_target / (1 + dup_fraction * 1.6))
    pool = pool[: int(n_base_target * 1.6)]  # room for the near-duplicate cleaning
    sets = _shingle_sets(pool, ngram)
    clean = near_duplicate_free(sets, 0.5)[:n_base_target]
    base = [pool[i] for i in clean]
    base_sets = [sets[i] for i in clean]
    vocab = sorted({w for d in base[:2000] for w in d.split()})

    texts: list[str] = list(base)
    cluster: list[int] = list(range(len(base)))
    jaccards: list[float] = []
    originals = rng.sample(range(len(base)), int(dup_fraction * len(base)))
    for o in originals:
        w = base[o].split()
        for _ in range(rng.choice([1, 1, 2, 3])):
            strength = 1.0
            for _attempt in range(8):
                v = _variant(w, vocab, rng, strength)
                j = _jaccard(base_sets[o], _shingle_sets([v], ngram)[0])
                if j >= min_jaccard:
                    texts.append(v)
                    cluster.append(o)
                    jaccards.append(j)
                    break
                strength *= 0.6
    order = list(range(len(texts)))
    rng.shuffle(order)
    texts = [texts[i] for i in order]
    cl = np.array(cluster)[order]
    # relabel each truth cluster by its smallest (shuffled) index
    first: dict[int, int] = {}
    for pos, c in enumerate(cl.tolist()):
        first.setdefault(c, pos)
    truth = np.array([first[c] for c in cl.tolist()], np.int64)
    jac = np.array(jaccards)
    info = {
        "n_base": len(base),
        "n_planted": len(jaccards),
        "planted_jaccard_min": round(float(jac.min()), 3) if len(jac) else None,
        "planted_jaccard_median": round(float(np.median(jac)), 3) if len(jac) else None,
        "planted_exact_copies": int((jac >= 1.0).sum()),
    }
    return texts, truth, info


# ----------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------


def pairwise_f1(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Pair-counting precision/recall/F1 of "same cluster" between two labelings."""

    def pairs_in(labels: np.ndarray) -> int:
        _, c = np.unique(labels, return_counts=True)
        return int((c * (c - 1) // 2).sum())

    joint = truth.astype(np.int64) * (len(truth) + 1) + pred.astype(np.int64)
    tp, t, p = pairs_in(joint), pairs_in(truth), pairs_in(pred)
    precision = tp / p if p else 1.0
    recall = tp / t if t else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ----------------------------------------------------------------------------------------------
# pipelines
# ----------------------------------------------------------------------------------------------


def _shingle_lists(texts: list[str], ngram: int) -> list[list[str]]:
    out = []
    for t in texts:
        w = words(t)
        n = len(w)
        starts = range(n - ngram + 1) if n >= ngram else range(min(n, 1))
        out.append([" ".join(w[i : i + ngram]) for i in starts])
    return out


def _kernel_threads() -> int:
    """Threads datadiet's C kernels run on (all cores unless DATADIET_THREADS says); 0 when
    the library is not built and the NumPy fallback runs."""
    return native.threads() if native.available() else 0


def run_datadiet(ds, threshold: float, num_perm: int, ngram: int) -> Selection:
    step = MinHashDedup(threshold=threshold, num_perm=num_perm, ngram=ngram)
    return step.select(ds, StepContext(show_progress=False, batch_size=2000))


def selection_labels(ds, sel: Selection) -> np.ndarray:
    """Cluster labels from a Selection's reasons (not timed: scoring only)."""
    index = {v: i for i, v in enumerate(ds["id"])}
    labels = np.arange(len(ds))
    removed = sel.removed_indices
    labels[removed] = [index[i] for i in sel.reason_detail[removed].tolist()]
    return labels


def run_datasketch(texts: list[str], threshold: float, num_perm: int, ngram: int) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    shingles = _shingle_lists(texts, ngram)
    data = [[s.encode("utf-8") for s in sh] for sh in shingles]
    mhs = MinHash.bulk(data, num_perm=num_perm, seed=42)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, (m, sh) in enumerate(zip(mhs, shingles, strict=True)):
            if sh:
                session.insert(i, m)
    pairs = [(i, j) for i, (m, sh) in enumerate(zip(mhs, shingles, strict=True)) if sh
             for j in lsh.query(m) if j > i]
    return connected_components(len(texts), np.array(pairs, np.int64).reshape(-1, 2))


def rensa_bands(threshold: float, num_perm: int) -> int:
    """rensa needs ``num_perm % bands == 0``; pick the divisor with the least S-curve error."""
    bands = np.array([b for b in range(1, num_perm + 1) if num_perm % b == 0])
    fp, fn = _s_curve_errors(threshold, bands, num_perm // bands)
    return int(bands[np.argmin(0.5 * fp + 0.5 * fn)])


def run_rensa(texts: list[str], threshold: float, num_perm: int, ngram: int) -> np.ndarray:
    import rensa

    shingles = _shingle_lists(texts, ngram)
    keep = [i for i, sh in enumerate(shingles) if sh]
    mhs = rensa.RMinHash.from_token_sets([shingles[i] for i in keep], num_perm, 42)
    lsh = rensa.RMinHashLSH(threshold, num_perm, rensa_bands(threshold, num_perm))
    lsh.insert_many(mhs)
    pairs = [(keep[a], keep[b]) for a, cands in enumerate(lsh.query_all(mhs)) for b in cands if b > a]
    return connected_components(len(texts), np.array(pairs, np.int64).reshape(-1, 2))


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds of this process, and the result of ``fn()``.

    CPU time is reported beside wall time because on a shared machine a process is often
    descheduled; for these single-threaded pipelines CPU time is the steadier measure.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def kernel_seconds(texts: list[str], num_perm: int, ngram: int, repeats: int) -> dict[str, float]:
    """Signatures only, from the same precomputed shingle hashes: datadiet vs rensa's Rust.

    Not part of the claim; it shows where the end-to-end difference comes from.
    """
    import rensa

    from datadiet.selectors.minhash import shingle_hashes, signatures_from_hashes

    hashes, offsets = shingle_hashes(texts, ngram=ngram)
    h64, o64 = hashes.astype(np.uint64), offsets.astype(np.uint64)
    best = {"datadiet_signatures_s": float("inf"), "rensa_signatures_s": float("inf")}
    for _ in range(repeats):
        w, _c, _ = timed(lambda: signatures_from_hashes(hashes, offsets, num_perm))
        best["datadiet_signatures_s"] = min(best["datadiet_signatures_s"], w)
        w, _c, _ = timed(
            lambda: rensa.RMinHash.digest_matrix_from_flat_token_hashes(h64, o64, num_perm, 42)
        )
        best["rensa_signatures_s"] = min(best["rensa_signatures_s"], w)
    return {k: round(v, 4) for k, v in best.items()}


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~6k docs, for CI (< 2 min)")
    ap.add_argument("--docs", type=int, default=None,
                    help="target corpus size (default 40000, which the sources cap near 27.5k "
                         "after near-duplicate cleaning; quick 6000)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--dup-fraction", type=float, default=0.2, help="share of base docs copied")
    ap.add_argument("--min-jaccard", type=float, default=0.85, help="least Jaccard of a variant")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per library (best kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n_docs = args.docs or (6000 if args.quick else 40000)
    repeats = args.repeats or (2 if args.quick else 3)

    from datasets import Dataset

    t0 = time.perf_counter()
    texts, truth, info = build_corpus(n_docs, args.dup_fraction, args.min_jaccard, args.ngram, args.seed)
    ds = Dataset.from_dict({"id": [f"doc-{i}" for i in range(len(texts))], "text": texts})
    setup_s = time.perf_counter() - t0
    n_words = sum(len(words(t)) for t in texts)
    print(f"corpus: {len(texts)} docs ({info['n_base']} base + {info['n_planted']} planted), "
          f"{n_words / len(texts):.0f} words/doc, built in {setup_s:.1f}s", file=sys.stderr)

    cfg = (args.threshold, args.num_perm, args.ngram)
    warm = texts[:2000]
    run_datadiet(ds.select(range(len(warm))), *cfg)
    run_datasketch(warm, *cfg)
    run_rensa(warm, *cfg)

    # Interleaved rounds (datadiet, rensa, datasketch, datadiet, ...): on a shared machine the
    # load changes over time, and interleaving exposes every library to the same periods.
    pipelines = {
        "datadiet": lambda: run_datadiet(ds, *cfg),
        "rensa": lambda: run_rensa(texts, *cfg),
        "datasketch": lambda: run_datasketch(texts, *cfg),
    }
    best = dict.fromkeys(pipelines, float("inf"))
    best_cpu = dict.fromkeys(pipelines, float("inf"))
    outputs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in pipelines.items():
            secs, cpu, outputs[name] = timed(fn)
            best[name] = min(best[name], secs)
            best_cpu[name] = min(best_cpu[name], cpu)
    results = {}
    for name, secs in best.items():
        out = outputs[name]
        labels = selection_labels(ds, out) if isinstance(out, Selection) else out
        results[name] = {"seconds": secs, "cpu_seconds": best_cpu[name],
                         "docs_per_s": len(texts) / secs, **pairwise_f1(truth, labels)}
    kernels = kernel_seconds(texts, args.num_perm, args.ngram, repeats)

    step = MinHashDedup(threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram)
    bands, rows = step.banding()
    print(f"\n{'library':<12}{'seconds':>10}{'cpu s':>9}{'docs/s':>12}{'precision':>11}"
          f"{'recall':>9}{'F1':>8}")
    for name, r in results.items():
        print(f"{name:<12}{r['seconds']:>10.3f}{r['cpu_seconds']:>9.3f}{r['docs_per_s']:>12.0f}"
              f"{r['precision']:>11.4f}{r['recall']:>9.4f}{r['f1']:>8.4f}")
    print(f"signatures only, same shingle hashes: datadiet {kernels['datadiet_signatures_s']:.4f}s"
          f", rensa {kernels['rensa_signatures_s']:.4f}s")
    dd = results["datadiet"]
    out = {
        "benchmark": "dedup",
        "quick": args.quick,
        "n_docs": len(texts),
        **info,
        "threshold": args.threshold,
        "num_perm": args.num_perm,
        "ngram": args.ngram,
        "bands": bands,
        "rows": rows,
        "rensa_bands": rensa_bands(args.threshold, args.num_perm),
        "repeats": repeats,
        "docs_per_s": round(dd["docs_per_s"], 1),
        "docs_per_cpu_s": round(len(texts) / dd["cpu_seconds"], 1),
        "vs_datasketch": round(results["datasketch"]["seconds"] / dd["seconds"], 2),
        "vs_rensa": round(results["rensa"]["seconds"] / dd["seconds"], 2),
        "f1": round(dd["f1"], 4),
        "precision": round(dd["precision"], 4),
        "recall": round(dd["recall"], 4),
        "datadiet_s": round(dd["seconds"], 4),
        "datasketch_s": round(results["datasketch"]["seconds"], 4),
        "rensa_s": round(results["rensa"]["seconds"], 4),
        "datadiet_cpu_s": round(dd["cpu_seconds"], 4),
        "datasketch_cpu_s": round(results["datasketch"]["cpu_seconds"], 4),
        "rensa_cpu_s": round(results["rensa"]["cpu_seconds"], 4),
        "vs_datasketch_cpu": round(results["datasketch"]["cpu_seconds"] / dd["cpu_seconds"], 2),
        "vs_rensa_cpu": round(results["rensa"]["cpu_seconds"] / dd["cpu_seconds"], 2),
        **kernels,
        "f1_datasketch": round(results["datasketch"]["f1"], 4),
        "f1_rensa": round(results["rensa"]["f1"], 4),
        "cpu_count": os.cpu_count(),
        "kernel_threads": _kernel_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"\nvs datasketch: {out['vs_datasketch']}x   vs rensa: {out['vs_rensa']}x   "
          f"F1: {out['f1']}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
