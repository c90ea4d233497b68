"""``datadiet train`` and ``datadiet generate``: argument parsers and run functions.

Kept apart from ``datadiet/cli.py`` so the training stage can also be started on its own, which
is what ``torchrun`` needs::

    torchrun --nproc_per_node 2 -m datadiet.pipeline.stages.cli train --data OUT --config CFG --out RUN

Each ``add_*_parser`` registers a sub-command and sets ``func`` to its run function, which
returns the process exit status. The training and inference modules (and with them torch) are
imported by the run functions, not here: every ``datadiet`` command builds this parser, and
``datadiet curate`` or ``why`` should not pay seconds of torch start-up it never uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datadiet.pipeline.cli_args import non_negative_float, positive_int
from datadiet.pipeline.io import (
    JSONL_SUFFIXES,
    DataError,
    UserError,
    install_signal_cleanup,
    load_corpus,
    looks_local,
    no_such_path,
    read_stdin_bytes,
    refuse_output_over_inputs,
    text_documents,
)
from datadiet.pipeline.ledger import Ledger

MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".json")

__all__ = [
    "add_generate_parser",
    "add_train_parser",
    "main",
    "run_generate",
    "run_train",
]


def _parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars: ``3e-4``, ``true``, ``null``, ``[1, 2]``."""
    import yaml

    return yaml.safe_load(text)


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train``: ``--data OUT --config CFG --out RUN``."""
    p = subparsers.add_parser(
        "train",
        help="train (or fine-tune) datadiet's Llama on a corpus and record the compute",
        description="Tokenize and pack DATA, train per CONFIG (YAML, see TrainConfig), write RUN/ "
        "(report.json with ledger, loss curve and flops_at_eval_loss; checkpoint.pt; model/). "
        "An existing RUN/checkpoint.pt is resumed. Under torchrun, trains with DDP.",
    )
    p.add_argument("--data", default=None,
                   help="curated output folder, a JSONL/Parquet/text file or folder, or a "
                   "token file from `datadiet export` (its folder or tokens.bin), read as it is")
    p.add_argument("--config", default=None,
                   help="YAML training config (default: the commented built-in one, "
                   "datadiet/pipeline/stages/configs/train_tiny.yaml)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--eval-data", default=None,
                   help="held-out corpus (use the same one for every run you want to compare)")
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--max-tokens", type=positive_int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set lr=3e-4")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh: ignore (and later replace) an existing RUN/checkpoint.pt")
    p.add_argument("--stop-at-step", type=positive_int, default=None,
                   help="stop after this step (checkpointed; rerun to continue)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_train)
    return p


def build_train_config(args: argparse.Namespace) -> Any:
    """The run's :class:`TrainConfig`: YAML file, then flags, then ``--set`` overrides."""
    overrides: dict[str, Any] = {
        "data": args.data, "eval_data": args.eval_data,
        "max_steps": args.max_steps, "max_tokens": args.max_tokens,
    }
    for item in args.set:
        if "=" not in item:
            raise DataError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    from datadiet.pipeline.stages.training import TrainConfig  # torch: only for `train`

    if args.config:
        return TrainConfig.from_yaml(args.config, **overrides)
    return TrainConfig.default(**overrides)


def _require_local(path: str | None, what: str) -> None:
    """A path the user named must exist before any work starts (never a hub lookup)."""
    if path is not None and not Path(path).expanduser().exists():
        raise no_such_path(path, what)


def run_train(args: argparse.Namespace) -> int:
    """Run ``datadiet train``; prints a one-line summary (rank 0) and returns 0."""
    from pydantic import ValidationError

    _require_local(args.config, "config file")
    try:
        cfg = build_train_config(args)
    except (ValidationError, ValueError) as exc:
        raise DataError(f"bad training config: {exc}") from None
    for name, value in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
        if value is not None and looks_local(value) and not Path(value).expanduser().exists():
            raise DataError(f"{name} {value}: no such file or folder")
    refuse_output_over_inputs(args.out, [v for v in (cfg.data, cfg.eval_data) if v])
    from datadiet.pipeline.stages.training import train  # torch: only for `train`

    report = train(cfg, args.out, resume=not args.no_resume, stop_at_step=args.stop_at_step,
                   verbose=not args.quiet)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        led = report["ledger"]["stages"]
        train_stage = next((s for s in led if s["name"] == "train"), {})
        print(json.dumps({
            "out": str(args.out),
            "status": report["status"],
            "steps": report["steps"],
            "final_eval_loss": report["final_eval_loss"],
            "train_tokens": train_stage.get("tokens"),
            "train_flops": train_stage.get("flops"),
            "tokens_per_second": report["tokens_per_second"],
        }))
    return 0


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``generate``: prompts in, completions out (datadiet's Llama, KV cache)."""
    p = subparsers.add_parser(
        "generate",
        help="generate text with datadiet's Llama (SmolLM2 by default, or a trained run)",
        description="Batched prefill + greedy or top-p decoding with a KV cache. Prompts come "
        "from --prompt (repeatable), --prompts-file (JSONL with a 'prompt' field, or text: one "
        "prompt per blank-line-separated block, the rule of every .txt input), or stdin (text).",
    )
    p.add_argument("--model", default=None,
                   help="HF Llama folder or id, a `datadiet train` run folder (default: SmolLM2)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=non_negative_float, default=1.0)
    p.add_argument("--top-p", type=non_negative_float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--cache", choices=["static", "growing"], default="static")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: PyTorch's; 1 is faster on a busy small machine)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt, then the ledger")
    p.add_argument("--ledger", default=None, help="also write the ledger JSON to this file")
    p.set_defaults(func=run_generate)
    return p


def _read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from the flags, a file or stdin, read by the package's one reader."""
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file).expanduser()
        if not path.exists():
            raise no_such_path(args.prompts_file, "prompts file")
        if path.name.endswith(JSONL_SUFFIXES):
            prompts += load_corpus(path, text_field="prompt").dataset["prompt"]
        else:
            prompts += text_documents(path.read_bytes(), str(path))
    if not prompts and not sys.stdin.isatty():
        prompts = text_documents(read_stdin_bytes(), "stdin")
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    """Run ``datadiet generate``; prints completions (or JSON lines) and returns 0."""
    if args.model is not None and looks_local(args.model, MODEL_SUFFIXES, bare_names=False) \
            and not Path(args.model).expanduser().exists():
        raise no_such_path(args.model, "model file or folder")
    if args.top_p > 1:
        raise DataError(f"--top-p: must be in [0, 1], got {args.top_p}")
    prompts = _read_prompts(args)
    if not prompts:
        print("datadiet generate: no prompts (use --prompt, --prompts-file or stdin)", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from datadiet.pipeline.stages.inference import load_generator  # torch: only for `generate`

    ledger = Ledger(label="generate")
    gen = load_generator(args.model, device=args.device, cache=args.cache,
                         batch_size=args.batch_size, ledger=ledger)
    outs = gen.generate(prompts, args.max_new_tokens, do_sample=args.sample,
                        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        seed=args.seed, chat=args.chat)
    for prompt, o in zip(prompts, outs, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": o.text, "tokens": len(o.token_ids),
                              "finish_reason": o.finish_reason}))
        else:
            print(f"### {prompt}\n{o.text}\n")
    if args.json:
        print(json.dumps({"ledger": ledger.to_dict()}))
    if args.ledger:
        Path(args.ledger).write_text(ledger.to_json())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m datadiet.pipeline.stages.cli``), e.g. under torchrun."""
    parser = argparse.ArgumentParser(prog="datadiet-train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_generate_parser(sub)
    args = parser.parse_args(argv)
    install_signal_cleanup()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"datadiet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
