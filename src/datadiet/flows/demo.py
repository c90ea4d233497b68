"""The ``efficiency`` flow at a small size: ``python -m datadiet.flows.demo`` (``make demo``).

No server needed: without ``PREFECT_API_URL`` Prefect runs the flow against its embedded,
SQLite-backed API, and the reports are printed here as well as stored as artifacts. With
``PREFECT_API_URL`` pointing at ``prefect server start``, the same run shows up in the UI.

Data: the sample corpus of ``datadiet demo`` (real WikiText and Doyle paragraphs with planted
copies and junk) and held-out WikiText from ``../shared/data`` when present (generated text
otherwise); SST-2 demonstrations for the prompt stage when the data kit is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from datadiet.flows.efficiency import EfficiencyParams, efficiency
from datadiet.flows.training import TrainBudget
from datadiet.pipeline.demo.corpus import (
    build_sample_corpus,
    find_shared_data,
    generated_paragraphs,
)
from datadiet.pipeline.io import atomic_write_text


def _sst2_jsonl(source: Path, target: Path, n: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    rows = [{"id": f"{source.stem}-{i}", "text": line[2:],
             "label": "positive" if line[:1] == "1" else "negative"} for i, line in enumerate(lines)]
    atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in rows))
    return target


def demo_params(out: Path, docs: int = 160, steps: int = 30, prompts: int = 6) -> EfficiencyParams:
    """Lay out the demo's inputs under ``out`` and return the flow's parameters."""
    out.mkdir(parents=True, exist_ok=True)
    data = find_shared_data()
    corpus = out / "inputs" / "corpus.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    build_sample_corpus(corpus, n_base=docs, shared_data=data)
    held_out = out / "inputs" / "held_out.txt"
    text = ((data / "lm" / "wikitext2_test.txt").read_text(encoding="utf-8")[:40_000] if data
            else "\n\n".join(generated_paragraphs(40, seed=1)))
    atomic_write_text(held_out, text)
    pool = eval_set = None
    if data is not None and prompts:
        pool = str(_sst2_jsonl(data / "icl" / "sst2" / "train.txt", out / "inputs" / "pool.jsonl", 200))
        eval_set = str(_sst2_jsonl(data / "icl" / "sst2" / "dev.txt", out / "inputs" / "eval.jsonl",
                                   prompts))
    return EfficiencyParams(
        source=str(corpus), out=str(out / "run"), eval_data=str(held_out),
        storage=str(out / "storage"), tokenizer="bytes",
        budget=TrainBudget(model="tiny", tokenizer="bytes", seq_len=128, batch_size=8,
                           max_steps=steps, eval_every=max(1, steps // 5), lr=2e-3,
                           warmup_steps=max(1, steps // 10)),
        pool=pool, eval_set=eval_set, k=2, prompt_limit=prompts or None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datadiet.flows.demo", description=__doc__)
    parser.add_argument("--out", default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--docs", type=int, default=160, help="base documents of the corpus")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each run")
    parser.add_argument("--prompts", type=int, default=6, help="prompts to build (0: skip)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="datadiet-flow-demo-"))
    params = demo_params(out, args.docs, args.steps, args.prompts)
    where = os.environ.get("PREFECT_API_URL") or "Prefect's embedded API (no server)"
    print(f"efficiency flow on {params.source} -> {params.out} ({where})")
    result = efficiency(params)
    cur, runs = result["curate"], result["train"]["runs"]
    comparison = result["train"]["comparison"]
    print(f"curated: {cur['rows_out']} of {cur['rows_in']} rows, {cur['tokens_out']:,} of "
          f"{cur['tokens_in']:,} tokens -> {cur['out']}")
    print(f"training (same budget): final eval loss {runs['baseline']['final_eval_loss']:.4f} "
          f"(full) vs {runs['candidate']['final_eval_loss']:.4f} (curated); FLOPs to "
          f"{comparison['target_eval_loss']:.4f}: {comparison['baseline_flops']} vs "
          f"{comparison['candidate_flops']}")
    if result["prompts"]:
        p = result["prompts"]
        print(f"prompts: {p['n']} prompts, {p['tokens_before']:,} -> {p['tokens_after']:,} tokens "
              f"-> {p['prompts']}")
    print(json.dumps({"rows": [cur["rows_in"], cur["rows_out"]],
                      "tokens": [cur["tokens_in"], cur["tokens_out"]],
                      "flops_saved_x": comparison["flops_saved_x"],
                      "prompt_tokens": [result["prompts"]["tokens_before"],
                                        result["prompts"]["tokens_after"]]
                      if result["prompts"] else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
