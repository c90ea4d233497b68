"""`datadiet demo`: curate the sample corpus and show what was caught, step by step."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from datadiet.pipeline.curate import curate_path, load_spec, print_report
from datadiet.pipeline.io import atomic_write_text, iter_jsonl
from datadiet.pipeline.sample_corpus import DEMO_SPEC, build_sample_corpus


def run_demo(out: Path, n_base: int = 240) -> int:
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

    planted = {r["id"]: r["planted"] for r in iter_jsonl(corpus)}
    removed = pq.read_table(curated / "removed" / "removed.parquet").to_pylist()
    caught: dict[str, Counter] = {}
    for row in removed:
        kind = planted[row["id"]].split(":")[0]
        caught.setdefault(kind, Counter())[row["step"]] += 1
    total = Counter(k.split(":")[0] for k in planted.values())
    print("\nplanted problems caught (removed / planted, by step):")
    for kind in ("exact", "near", "junk", "original"):
        by_step = ", ".join(f"{s}={n}" for s, n in caught.get(kind, Counter()).most_common())
        n_removed = sum(caught.get(kind, Counter()).values())
        label = "originals removed" if kind == "original" else kind
        print(f"  {label:<18} {n_removed:>4} / {total[kind]:<4} {by_step}")
    print(f"\noutput: {curated}/ — load it with "
          f"datasets.load_dataset('parquet', data_files='{curated}/*.parquet')")
    summary = {"rows_in": result.manifest.steps[0].rows_in, "rows_out": len(result.dataset),
               "caught": {k: sum(v.values()) for k, v in caught.items()}, "planted": dict(total)}
    print(json.dumps(summary))
    return 0
