"""The ``efficiency`` flow at a small size: ``python -m datadiet.flows.demo`` (``make demo``).

No server needed: without ``PREFECT_API_URL`` Prefect runs the flow against its embedded,
SQLite-backed API, and the reports are printed here as well as stored as artifacts. With
``PREFECT_API_URL`` pointing at ``prefect server start``, the same run shows up in the UI.

Data: the real-data kit (``--data``, else ``$DATADIET_SHARED_DATA``, else ``../shared/data``
from the working folder or one of its parents); without it the demo refuses (exit 2) rather
than measure on made-up text. The end-to-end benchmark's raw mixture at its quick size
(WikiText-2, Shakespeare, Sherlock Holmes, GSM8K and T0 with planted copies and junk), curated
towards a WikiText-2 sample with DSIR, both runs evaluated on WikiText-2 test; an instruction
pool with planted problems (:mod:`datadiet.experiments.sft_pool`) for the fine-tuning stage;
SST-2 demonstrations for the prompt stage. Everything lands in ``--out`` (default
``demo-out/``): ``inputs/``, ``curated/`` (dataset and manifest), ``training/`` (both runs'
reports and ledgers), ``finetuning/``, ``prompts/``, and ``report.md`` with its plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from datadiet.experiments.comparison import (
    curation_spec,
    prepare_tokenizer,
    small_train_config,
)
from datadiet.experiments.corpus import DataKitMissing, data_kit
from datadiet.experiments.mixture import MixtureSizes, build_mixture
from datadiet.experiments.sft_pool import PoolMix, build_sft_pool
from datadiet.flows.chain import efficiency
from datadiet.flows.training import TrainBudget
from datadiet.pipeline.io import atomic_write_text


def _sst2_jsonl(source: Path, target: Path, n: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    rows = [{"id": f"{source.stem}-{i}", "text": line[2:],
             "label": "positive" if line[:1] == "1" else "negative"} for i, line in enumerate(lines)]
    atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in rows))
    return target


def demo_params(out: Path, sizes: MixtureSizes | None = None, steps: int = 100,
                prompts: int = 6, sft_steps: int = 60, pool: PoolMix | None = None,
                data: str | os.PathLike | None = None) -> dict[str, Any]:
    """Lay out the demo's inputs under ``out/inputs`` and return the flow's parameters
    (``efficiency(**params)`` runs it).

    The corpus is the end-to-end benchmark's raw mixture (WikiText-2, Shakespeare, Sherlock
    Holmes, GSM8K, T0 with planted copies and junk; :mod:`datadiet.experiments.mixture`),
    curated towards a WikiText-2 sample with DSIR and evaluated on WikiText-2 test. The
    fine-tuning stage (``sft_steps`` > 0) fine-tunes the pre-training budget's model, first
    pre-trained on the raw corpus, on a planted instruction pool. Raises
    :class:`DataKitMissing` without the data kit.
    """
    data = data_kit(data)
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "inputs"
    mixture = build_mixture(inputs, data, sizes or MixtureSizes.quick())
    spec = yaml.safe_dump(curation_spec(mixture.target), sort_keys=False)
    tokenizer = prepare_tokenizer("bpe", mixture.corpus, inputs / "tokenizer")
    config = small_train_config(quick=True, max_steps=steps, eval_every=max(1, steps // 20),
                                tokenizer=tokenizer)
    sft = build_sft_pool(inputs / "sft", data, pool or PoolMix.quick()) if sft_steps else None
    pool = eval_set = None
    if prompts:
        pool = str(_sst2_jsonl(data / "icl" / "sst2" / "train.txt", inputs / "sst2_pool.jsonl", 200))
        eval_set = str(_sst2_jsonl(data / "icl" / "sst2" / "dev.txt", inputs / "sst2_dev.jsonl",
                                   prompts))
    return dict(
        source=str(mixture.corpus), out=str(out), eval_data=str(mixture.eval), spec=spec,
        storage=str(out / "storage"), tokenizer=tokenizer,
        budget=TrainBudget(model=config.model, tokenizer=config.tokenizer, seq_len=config.seq_len,
                           batch_size=config.batch_size, max_steps=config.max_steps,
                           eval_every=config.eval_every, lr=config.lr,
                           warmup_steps=config.warmup_steps,
                           max_eval_blocks=config.max_eval_blocks,
                           num_threads=config.num_threads, device=config.device,
                           extra={"min_lr_ratio": config.min_lr_ratio}),
        pool=pool, eval_set=eval_set, k=4, compress_rate=0.4, prompt_limit=prompts or None,
        sft_pool=str(sft.pool) if sft else None, sft_eval=str(sft.eval) if sft else None,
        sft_truth=str(sft.truth) if sft else None, sft_steps=max(sft_steps, 1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datadiet.flows.demo", description=__doc__)
    parser.add_argument("--out", default="demo-out", help="where to write (default: demo-out)")
    parser.add_argument("--steps", type=int, default=100, help="training steps of each run")
    parser.add_argument("--prompts", type=int, default=6, help="prompts to build (0: skip)")
    parser.add_argument("--sft-steps", type=int, default=60,
                        help="fine-tuning steps of each arm (0: skip the fine-tuning stage)")
    parser.add_argument("--data", default=None, help="the real-data kit (default: "
                        "$DATADIET_SHARED_DATA, else ../shared/data above the working folder)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        params = demo_params(out, steps=args.steps, prompts=args.prompts,
                             sft_steps=args.sft_steps, data=args.data)
    except DataKitMissing as exc:
        print(f"datadiet demo: error: {exc}", file=sys.stderr)
        return 2
    where = os.environ.get("PREFECT_API_URL") or "Prefect's embedded API (no server)"
    print(f"efficiency flow on {params['source']} -> {params['out']} ({where})")
    result = efficiency(**params)
    cur, runs = result["curate"], result["train"]["runs"]
    comparison = result["train"]["comparison"]
    print(f"curated: {cur['rows_out']} of {cur['rows_in']} rows, {cur['tokens_out']:,} of "
          f"{cur['tokens_in']:,} tokens -> {cur['out']}")
    print(f"training (same budget): final eval loss {runs['baseline']['final_eval_loss']:.4f} "
          f"(full) vs {runs['candidate']['final_eval_loss']:.4f} (curated); FLOPs to "
          f"{comparison['target_eval_loss']:.4f}: {comparison['baseline_flops']} vs "
          f"{comparison['candidate_flops']}")
    if result["finetune"]:
        ft = result["finetune"]["arms_table"]
        print("fine-tuning (same base, same budget): final eval loss "
              + ", ".join(f"{arm} {row['final eval loss (mean)']:.4f} ({row['rows']} rows)"
                          for arm, row in ft.items()))
    print(f"report: {result['report']}")
    if result["prompts"]:
        p = result["prompts"]
        print(f"prompts: {p['n']} prompts, {p['tokens_before']:,} -> {p['tokens_after']:,} tokens "
              f"-> {p['prompts']}")
    print(json.dumps({"rows": [cur["rows_in"], cur["rows_out"]],
                      "tokens": [cur["tokens_in"], cur["tokens_out"]],
                      "flops_saved_x": comparison["flops_saved_x"],
                      "sft_flops_ratio": result["finetune"]["savings"]["ratio"]["mean"]
                      if result["finetune"] else None,
                      "prompt_tokens": [result["prompts"]["tokens_before"],
                                        result["prompts"]["tokens_after"]]
                      if result["prompts"] else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
