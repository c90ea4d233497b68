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
from pathlib import Path
from typing import Any

from datadiet.pipeline.cli_args import fraction, positive_int
from datadiet.pipeline.io import DataError, UserError, decode_utf8, no_such_path, read_stdin_bytes
from datadiet.prompting.compression.api import compress
from datadiet.prompting.compression.budget import BudgetError
from datadiet.prompting.compression.protect import compile_patterns


def add_compress_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``compress`` sub-command on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "compress",
        help="compress a prompt (stdin) to a token budget",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--rate", type=fraction, help="keep this fraction of the tokens (0-1]")
    budget.add_argument("--target-tokens", type=positive_int,
                        help="keep exactly this many tokens (at least 1)")
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
                   help="passages: blank-line paragraphs, long ones cut into sentences "
                        "(default), or the whole prompt as one")
    p.add_argument("--input", "-i", help="read the prompt from this file instead of stdin")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--contrastive", action="store_true",
                   help="lingua: question-conditioned contrastive perplexity")
    p.set_defaults(func=run_compress)
    return p


def _read_prompt_text(args: argparse.Namespace) -> str:
    """The prompt as text: UTF-8 from ``--input`` or stdin, named in any error."""
    if args.input:
        path = Path(args.input).expanduser()
        if not path.is_file():
            raise no_such_path(args.input, "file")
        text = decode_utf8(path.read_bytes(), str(path))
        label = str(path)
    else:
        text = decode_utf8(read_stdin_bytes(), "stdin")
        label = "stdin"
    if not text.strip():
        raise DataError(f"{label}: empty prompt (nothing to compress)")
    return text


def run_compress(args: argparse.Namespace) -> int:
    """Run ``datadiet compress``; returns the process exit code.

    Every argument and the input are checked before the scoring model loads: a bad budget,
    a bad ``--protect`` regex, a missing or non-UTF-8 input, or an empty prompt exit 2 at once.
    """
    if args.contrastive and args.method != "lingua":
        raise DataError("--contrastive applies to --method lingua only")
    if not args.no_protect and args.protect:
        try:
            compile_patterns(args.protect)
        except ValueError as exc:
            raise DataError(f"--protect: {exc}") from None
    text = _read_prompt_text(args)
    protect: Any = [] if args.no_protect else args.protect
    options: dict[str, Any] = {"contrastive": True} if args.contrastive else {}
    try:
        result = compress(
            text, split="auto" if args.split == "blank-lines" else "none", rate=args.rate,
            target_tokens=args.target_tokens, question=args.question,
            instruction=args.instruction, method=args.method, model=args.model, protect=protect,
            target_tokenizer=args.target_tokenizer, **options,
        )
    except BudgetError as exc:
        print(f"datadiet compress: error: {exc}", file=sys.stderr)
        return 2
    except UserError:  # a model or tokenizer not available offline: exit 2, said by the caller
        raise
    except (ValueError, ImportError, RuntimeError) as exc:
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
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"datadiet compress: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
