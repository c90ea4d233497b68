"""``datadiet compress``: compress a prompt read from stdin (or a file) to a token budget.

Thin over :func:`datadiet.prompting.compress`: the compressed text goes to stdout so it pipes
into the next tool; the numbers (tokens before/after, seconds) go to stderr, or everything as one
JSON object with ``--json``.

    datadiet compress --rate 0.5 --question "What is 2+2?" < prompt.txt > short.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from datadiet.prompting.compression.api import compress
from datadiet.prompting.compression.budget import BudgetError


def add_compress_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``compress`` sub-command on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "compress",
        help="compress a prompt (stdin) to a token budget",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--rate", type=float, help="keep this fraction of the tokens (0-1]")
    budget.add_argument("--target-tokens", type=int, help="keep exactly this many tokens")
    p.add_argument("--question", help="question appended after the prompt, kept verbatim")
    p.add_argument("--instruction", help="instruction put first, kept verbatim")
    p.add_argument("--method", default="lingua", choices=["lingua", "selective", "llmlingua"])
    p.add_argument("--model", help="scoring model: HF id or local folder (default: SmolLM2)")
    p.add_argument("--protect", action="append", metavar="REGEX",
                   help="regex or preset (numbers, json_keys, code, urls) to keep verbatim; "
                        "repeatable; default: numbers")
    p.add_argument("--no-protect", action="store_true", help="protect nothing")
    p.add_argument("--target-tokenizer", help="count tokens with this tokenizer, e.g. cl100k_base")
    p.add_argument("--split", default="blank-lines", choices=["blank-lines", "none"],
                   help="segments: blocks separated by blank lines (default), or one segment")
    p.add_argument("--input", "-i", help="read the prompt from this file instead of stdin")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--contrastive", action="store_true",
                   help="lingua: question-conditioned contrastive perplexity")
    p.set_defaults(func=run_compress)
    return p


def run_compress(args: argparse.Namespace) -> int:
    """Run ``datadiet compress``; returns the process exit code."""
    if args.input:
        with open(args.input, encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = sys.stdin.read()
    prompt: str | list[str] = text.split("\n\n") if args.split == "blank-lines" else text
    protect: Any = [] if args.no_protect else args.protect
    options: dict[str, Any] = {}
    if args.contrastive:
        if args.method != "lingua":
            print("--contrastive applies to --method lingua only", file=sys.stderr)
            return 2
        options["contrastive"] = True
    try:
        result = compress(
            prompt, rate=args.rate, target_tokens=args.target_tokens, question=args.question,
            instruction=args.instruction, method=args.method, model=args.model, protect=protect,
            target_tokenizer=args.target_tokenizer, **options,
        )
    except (BudgetError, ValueError, ImportError, RuntimeError) as exc:
        print(f"datadiet compress: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        sys.stdout.write(result.text)
        if not result.text.endswith("\n"):
            sys.stdout.write("\n")
        print(
            f"{result.origin_tokens} -> {result.compressed_tokens} tokens "
            f"(target {result.target_tokens}, {result.ratio:.2f}x, {result.tokenizer}) "
            f"in {result.seconds:.2f}s",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m datadiet.prompting.compression.cli``)."""
    parser = argparse.ArgumentParser(prog="datadiet")
    add_compress_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
