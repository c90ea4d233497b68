"""`datadiet demo`: curate the sample corpus and show what was caught, step by step."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from datadiet.kernels.model import LlamaConfig
from datadiet.pipeline.curate import curate_path, load_spec, print_report
from datadiet.pipeline.demo.corpus import DEMO_SPEC, build_sample_corpus
from datadiet.pipeline.io import atomic_write_text, iter_jsonl
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.tokenizer import load_tokenizer


def run_demo(out: Path, n_base: int = 160) -> int:
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "sample_corpus.jsonl"
    spec = out / "spec.yaml"
    counts = build_sample_corpus(corpus, n_base=n_base)
    atomic_write_text(spec, DEMO_SPEC)
    print(f"sample corpus: {corpus} ({sum(counts.values())} docs: {counts})")
    print(f"spec: {spec}\n{DEMO_SPEC}")
    curated = out / "curated"
    result = curate_path(corpus, load_spec(spec), curated, keep_fields=["planted", "source_id"],
                         overwrite=True)
    print()
    print_report(result.manifest)

    records = list(iter_jsonl(corpus))
    removed = {r["id"]: r["step"] for r in
               pq.read_table(curated / "removed" / "removed.parquet").to_pylist()}
    groups: dict[str, list[dict]] = {}
    for rec in records:
        if rec["source_id"]:
            groups.setdefault(rec["source_id"], []).append(rec)
    caught = _score_planted(records, groups, removed)
    print("\nplanted problems (ground truth from the generator):")
    for label, (hit, total, by_step) in caught.items():
        steps = ", ".join(f"{k}={v}" for k, v in by_step.most_common()) or "-"
        print(f"  {label:<44}{hit:>5} / {total:<5} {steps}")
    savings = training_savings(corpus, curated, result.manifest)
    print(f"\noutput: {curated}/ — load it with "
          f"datasets.load_dataset('parquet', data_files='{curated}/*.parquet')")
    summary = {"rows_in": result.manifest.steps[0].rows_in, "rows_out": len(result.dataset),
               **{label.split(" (")[0].replace(" ", "_"): [hit, total]
                  for label, (hit, total, _) in caught.items()},
               "train_flops_ratio": savings["flops"][2]}
    print(json.dumps(summary))
    return 0


def _score_planted(records: list[dict], groups: dict[str, list[dict]],
                   removed: dict[str, str]) -> dict[str, tuple[int, int, Counter]]:
    """Score removals against the planted ground truth.

    A duplicate group (an original and its planted copies) is handled right when exactly one
    member survives — which member is irrelevant: dedup keeps the first one it meets.
    """
    out: dict[str, tuple[int, int, Counter]] = {}
    for kind in ("exact", "near"):
        sized = [g for g in groups.values() if any(r["planted"] == kind for r in g)]
        copies = sum(sum(r["planted"] == kind for r in g) for g in sized)
        hit, by_step = 0, Counter()
        for g in sized:
            gone = [removed[r["id"]] for r in g if r["id"] in removed]
            hit += min(len(gone), sum(r["planted"] == kind for r in g))
            by_step.update(gone)
        out[f"{kind} copies removed"] = (hit, copies, by_step)
    junk = [r for r in records if r["planted"].startswith("junk")]
    out["junk removed"] = (sum(r["id"] in removed for r in junk), len(junk),
                           Counter(removed[r["id"]] for r in junk if r["id"] in removed))
    kept_groups = sum(1 for g in groups.values() if len(g) > 1 and
                      sum(r["id"] not in removed for r in g) == 1)
    multi = sum(1 for g in groups.values() if len(g) > 1)
    out["duplicate groups left with exactly one doc"] = (kept_groups, multi, Counter())
    solo = [g[0] for g in groups.values() if len(g) == 1]
    out["unique originals removed (quality/perplexity)"] = (
        sum(r["id"] in removed for r in solo), len(solo),
        Counter(removed[r["id"]] for r in solo if r["id"] in removed))
    return out


def training_savings(corpus: Path, curated: Path, manifest, context: int = 2048) -> dict:
    """What one training epoch of SmolLM2-135M would cost on the full vs the curated corpus.

    Tokens are counted with SmolLM2's tokenizer, FLOPs with the ledger's analytic formula for
    the model's shape; the curated side also pays for the curation itself (the tokens and FLOPs
    its model-based steps spent), so the ratio is the honest net saving.
    """
    from datasets import load_dataset

    tokenizer = load_tokenizer(None)
    shape = LlamaConfig.preset("smollm2-135m").shape()

    def count(texts: list[str]) -> int:
        return sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    full_tokens = count([r["text"] for r in iter_jsonl(corpus)])
    kept = load_dataset("parquet", data_files=f"{curated}/*.parquet", split="train")
    kept_tokens = count(list(kept["text"]))
    full, small = Ledger("full data"), Ledger("curated")
    full.add("train 1 epoch", full_tokens, shape.flops(full_tokens, context, training=True))
    small.add("train 1 epoch", kept_tokens, shape.flops(kept_tokens, context, training=True))
    curation_tokens = sum(s.tokens_scored for s in manifest.steps)
    curation_flops = sum(s.flops for s in manifest.steps)
    small.add("curation", curation_tokens, curation_flops)
    train_full, train_small = full.stages["train 1 epoch"], small.stages["train 1 epoch"]
    print(f"\ntraining compute for one epoch of SmolLM2-135M at context {context} "
          "(analytic FLOPs, datadiet.Ledger):")
    print(f"  {'':<30}{'full data':>14}{'curated':>14}")
    print(f"  {'training tokens':<30}{train_full.tokens:>14,}{train_small.tokens:>14,}")
    print(f"  {'training FLOPs':<30}{train_full.flops:>14.3e}{train_small.flops:>14.3e}")
    print(f"  {'curation FLOPs (LM scoring)':<30}{0:>14.3e}{curation_flops:>14.3e}")
    cmp = full.compare(small)
    print(f"  {'total FLOPs':<30}{cmp['flops'][0]:>14.3e}{cmp['flops'][1]:>14.3e}"
          f"   net saving x{cmp['flops'][2]:.2f}")
    return cmp
