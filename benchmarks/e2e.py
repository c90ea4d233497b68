"""Benchmark: the saved-compute report, end to end, on real data (issue 14).

Claims (targets): curated pre-training data reaches the full-data run's final eval loss for at
least 2× fewer training FLOPs, curation FLOPs included (``train_flops_ratio``); compressing the
best few-shot prompts shortens them at least 3× (``prompt_token_ratio``) for at most 2 accuracy
points (``icl_acc_drop``); fine-tuning on selected instruction rows saves FLOPs the same way
(``sft_flops_ratio``).

Parts:

* pre-training — a raw corpus mixing WikiText-2 valid, Shakespeare, Sherlock Holmes, GSM8K and
  T0 prompts with planted exact/near duplicates and junk; curated with exact_dedup,
  minhash_dedup, quality and DSIR (target: a WikiText-2 valid sample disjoint from the corpus);
  the same small Llama trained on full vs curated data — same tokenizer (a BPE fitted to the raw
  corpus), seeds and FLOP budget — eval loss on WikiText-2 test
  (:mod:`datadiet.experiments.comparison`);
* fine-tuning — the planted instruction pool (:mod:`datadiet.experiments.sft_pool`: T0 rows,
  GSM8K worked answers, 30 % planted problems; ``--sft-mix`` other shares); the default
  fine-tuning spec (response rules, then MinHash dedup) vs a random subset of the same size vs
  all rows, plus the longest responses and Superfiltering scored by the base itself (a small
  scorer) at the same size, and the ``oracle`` (every planted row removed by the ground truth:
  the ceiling of any selection on this pool and trainee);
  the same base (the pre-training part's full-data model, or with ``--parts sft`` alone a small
  base pre-trained on the same raw corpus), budget and seeds; eval loss on clean held-out
  responses; data efficiency, selection FLOPs and the break-even table
  (:mod:`datadiet.experiments.finetuning`);
* prompts — SST-2 dev with SmolLM2-135M-Instruct: zero-shot, random 8-shot, kNN 8-shot with the
  most similar last, and that compressed; accuracy and mean prompt tokens
  (:mod:`datadiet.prompting.icl`).

A part that cannot run is reported as "not measured", with the reason, never estimated.

``--quick`` shrinks the corpus and the model (a few minutes on two loaded cores). The report
(``report.md``, PNG plots, manifest, every run's ledger) is written to ``--out``. The last line
printed is a JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from datadiet.experiments.comparison import (
    PretrainSettings,
    prepare_tokenizer,
    pretraining_comparison,
    small_train_config,
)
from datadiet.experiments.finetuning import (
    DEFAULT_SFT_SPEC,
    FinetuneSettings,
    finetuning_comparison,
    pretrain_base,
)
from datadiet.experiments.mixture import MixtureSizes, build_mixture
from datadiet.experiments.prompts import compare_strategies
from datadiet.experiments.report import (
    PromptResults,
    SavingsReport,
    headline_numbers,
    write_savings_report,
)
from datadiet.experiments.sft_pool import PoolMix, build_sft_pool
from datadiet.pipeline.report import RunContext
from datadiet.pipeline.stages.training import load_text_dataset
from datadiet.prompting.demos import preset
from datadiet.prompting.icl import fixed_subset, read_labelled_lines

DATA = Path(
    os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def measure_prompts(quick: bool, seeds: list[int], progress: Callable[[str], None]) -> PromptResults:
    """SST-2 dev with SmolLM2-135M-Instruct (:func:`compare_strategies`), k = 8, demonstrations
    compressed to a quarter; a fixed subset of the dev set, pool sampled from train."""
    pool = read_labelled_lines(DATA / "icl" / "sst2" / "train.txt")
    test = read_labelled_lines(DATA / "icl" / "sst2" / "dev.txt")
    pool = pool.subset(fixed_subset(len(pool), 500 if quick else 2000))
    test = test.subset(fixed_subset(len(test), 40 if quick else 200))
    return compare_strategies(pool, test, preset("sentiment", ["0", "1"]),
                              task=f"SST-2 dev ({len(test)} rows; pool {len(pool)} train rows)",
                              k=8, compress_rate=0.25, seeds=seeds, progress=progress)


def measure_finetuning(out: Path, args: argparse.Namespace, seeds: list[int],
                       pretraining: dict | None, progress: Callable[[str], None]) -> dict:
    """The fine-tuning part: planted pool, default spec vs random vs all (and two baselines)."""
    if pretraining is not None:
        base = Path(pretraining["runs"]["full"][0]["run_dir"]) / "model"
    else:  # --parts sft alone: a small base on the same raw corpus and tokenizer approach
        progress("pre-training a small base for the fine-tuning part")
        mixture = build_mixture(out / "mixture", DATA, MixtureSizes.quick())
        tokenizer = prepare_tokenizer("bpe", mixture.corpus, out / "tokenizer")
        base = pretrain_base(out / "base", load_text_dataset(mixture.corpus), small_train_config(
            True, tokenizer=tokenizer, max_steps=args.sft_base_steps, eval_every=50,
            num_threads=args.threads))
    mix = PoolMix.quick() if args.quick else PoolMix()
    if args.sft_mix:  # other shares of planted problems (a noisier pool, say)
        mix = dataclasses.replace(mix, **json.loads(args.sft_mix))
    pool = build_sft_pool(out / "pool", DATA, mix)
    steps = math.ceil(args.sft_epochs * mix.rows / 16)  # batch 16, one pair per block
    tune = small_train_config(args.quick, max_steps=steps, eval_every=max(1, steps // 25),
                              lr=2e-3, warmup_steps=3, num_threads=args.threads)
    methods = {
        "longest": lambda k: [{"longest": {"keep": k}}],
        "superfiltering (scorer: the base)": lambda k: [{"ifd": {
            "keep": k, "ratio": "ppl", "max_ifd": None, "model": str(base), "max_length": 128,
            "cache": False}}],
    }
    settings = FinetuneSettings(train=tune, seeds=seeds, methods=methods)
    spec = DEFAULT_SFT_SPEC
    if args.sft_spec:  # another spec in the `selected` arm; `{base}` names the base model
        text = Path(args.sft_spec).read_text(encoding="utf-8").replace("{base}", str(base))
        spec = yaml.safe_load(text)
    return finetuning_comparison(out, pool.pool, pool.eval, base, spec, settings,
                                 truth=pool.truth, progress=progress)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpus and model (minutes)")
    parser.add_argument("--out", default="e2e-out", help="report folder (default: e2e-out)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: on a shared 2-core machine two "
                        "threads mostly measure contention)")
    parser.add_argument("--tokenizer", default="bpe",
                        help="bpe (a 1,024-token BPE fitted to the raw corpus; default) or bytes")
    parser.add_argument("--sft-epochs", type=float, default=2.0,
                        help="fine-tuning budget, in epochs of the whole pool (default 2)")
    parser.add_argument("--sft-spec", default=None,
                        help="YAML spec for the selected arm (default: DEFAULT_SFT_SPEC); the "
                        "text {base} is replaced by the base model's folder")
    parser.add_argument("--sft-mix", default=None,
                        help='JSON of PoolMix fields for the pool, e.g. \'{"off_topic": 0.1}\' '
                        "(default: the PoolMix defaults, 30%% planted)")
    parser.add_argument("--sft-base-steps", type=int, default=300,
                        help="pre-training steps of the base when the pretrain part is skipped")
    parser.add_argument("--parts", default="pretrain,sft,prompts",
                        help="comma-separated subset of pretrain,sft,prompts")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    torch.set_num_threads(args.threads)  # the prompt part's scoring too, not only training
    out = Path(args.out)
    seeds = list(range(args.seeds))
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    command = "python benchmarks/e2e.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = SavingsReport(context=RunContext(command=command.strip(), seeds=seeds,
                                              data=f"{DATA} (WikiText-2, Shakespeare, Sherlock "
                                              "Holmes, GSM8K, T0, SST-2)"))
    if "pretrain" in parts:
        settings = PretrainSettings.quick(seeds) if args.quick else PretrainSettings(seeds=seeds)
        # save_model: the full-data run of the first seed is the fine-tuning part's base model
        settings.train = settings.train.model_copy(update={"num_threads": args.threads,
                                                           "save_model": True})
        settings.tokenizer = args.tokenizer
        report.pretraining = pretraining_comparison(out / "pretraining", DATA, settings,
                                                    progress=progress)
    else:
        report.missing["train"] = "skipped (--parts)"
    if "sft" not in parts:
        report.missing["sft"] = "skipped (--parts)"
    else:
        report.finetuning = measure_finetuning(out / "finetuning", args, seeds, report.pretraining,
                                               progress)
    if "prompts" in parts:
        report.prompts = measure_prompts(args.quick, seeds, progress=progress)
    else:
        report.missing["prompts"] = "skipped (--parts)"
    path = write_savings_report(out, report)
    numbers = headline_numbers(report)
    progress(f"report: {path}")
    result = {"benchmark": "e2e", "quick": args.quick, "seconds": round(time.perf_counter() - started, 1),
              "report": str(path), **numbers}
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
