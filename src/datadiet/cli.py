"""`datadiet` sub-commands: thin wrappers over the Python API.

Errors in the user's input (bad data, bad spec, bad argument, an output that must not be
written) are a ``UserError``: they exit with status 2 and one message that names the file, line
or field. Anything else is a bug: it keeps its traceback and exits 1. SIGTERM unwinds like
Ctrl-C, so no temp data or half-written output stays behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from datadiet.pipeline.cli_args import positive_int
from datadiet.pipeline.models.loading import keep_caches_in_user_cache


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="select a smaller, cleaner pre-training corpus",
                       description="Run the steps of SPEC on INPUT and write OUT/: Parquet shards "
                       "and a dataset card (README.md) that any reader loads as the kept rows, "
                       "and, hidden, .datadiet/manifest.json and .datadiet/removed.arrow.")
    p.add_argument("input", help="JSONL(.gz) / Parquet / text file or folder, saved dataset, or hub id")
    p.add_argument("--spec", required=True, help="YAML list of steps, or a curated output (or its manifest) to repeat")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id")
    p.add_argument("--keep-fields", default="", help="comma-separated extra fields to carry along")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad rows: stop with file:line (raise) or skip and count them (skip)")
    p.add_argument("--on-duplicate-id", choices=["error", "rename"], default="error",
                   help="a repeated source id: stop naming both rows (error), or suffix the "
                        "repeats -2, -3 and count them in the manifest (rename)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT (only a folder datadiet wrote: it has a manifest)")
    p.add_argument("--rows-per-shard", type=positive_int, default=100_000)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="where maps and reduces run: this process (local), or a Dask cluster "
                        "with the reduces distributed (dask; see docs/engine.md)")
    p.add_argument("--scheduler", default=None,
                   help="with --executor dask: a scheduler address (tcp://host:8786); "
                        "without it a local cluster of --workers processes is started")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="with --executor dask and no --scheduler: local worker processes")
    p.add_argument("--worker-memory", default="auto",
                   help="with --executor dask and no --scheduler: memory limit per worker "
                        "(e.g. 400MiB); past it a worker spills its features to disk")
    p.set_defaults(func=_run_curate)


def _arrow_pool_that_returns_memory() -> None:
    """Arrow's jemalloc pool for this process, unless the user chose one.

    Why: pyarrow's default pool (mimalloc) keeps the blocks the reader parsed and freed; jemalloc
    hands them back, which lowered the peak of a 55k-document curate by about 60 MiB (12%)
    at the same CPU time (benchmarks/RESULTS.md). A pyarrow built without jemalloc keeps its
    default.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        # Freed pages go back to the system at once rather than after jemalloc's 1 s decay:
        # a curate run parses one block after another, and a block's pages are not reused.
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # pragma: no cover - a build without jemalloc
        pass


def _run_curate(args: argparse.Namespace) -> int:
    from datadiet.pipeline.curate import curate_path, load_spec, load_spec_fields, print_report
    from datadiet.pipeline.errors import SpecError
    from datadiet.pipeline.io import MANIFEST_FILE

    _arrow_pool_that_returns_memory()
    steps = load_spec(args.spec)
    fields = load_spec_fields(args.spec)
    keep = [f.strip() for f in args.keep_fields.split(",") if f.strip()]
    with contextlib.ExitStack() as stack:
        executor = None
        if args.executor == "dask":
            executor_cls = _dask_executor()
            executor = stack.enter_context(executor_cls(
                address=args.scheduler, workers=args.workers, memory_limit=args.worker_memory))
        try:
            result = curate_path(args.input, steps, args.out, text_field=args.text_field,
                                 id_field=args.id_field, keep_fields=keep, on_error=args.on_error,
                                 on_duplicate_id=args.on_duplicate_id, overwrite=args.overwrite,
                                 rows_per_shard=args.rows_per_shard, show_progress=not args.quiet,
                                 fields=fields or "auto", executor=executor)
        except SpecError as exc:  # a whole-plan check names "entry N": say which spec file
            if str(exc).startswith("entry "):
                raise SpecError(f"{args.spec}: {exc}") from None
            raise
    print_report(result.manifest)
    print(f"wrote {args.out}/ ({result.rows_kept} rows); manifest: "
          f"{os.path.join(args.out, MANIFEST_FILE)}")
    return 0


def _dask_executor() -> type:
    """The Dask executor class, or a user error naming what to install (``distributed`` is an
    optional dependency, imported only when asked for)."""
    from datadiet.pipeline.io import UserError

    try:
        from datadiet.pipeline.executors.dask import DaskExecutor
    except ImportError as exc:
        raise UserError(f"--executor dask needs Dask's `distributed` ({exc}); install it with "
                        "pip install 'datadiet[flows]'") from None
    return DaskExecutor


def _add_why(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("why", help="why was a document removed from a curated output?")
    p.add_argument("out", help="a folder written by `datadiet curate`")
    p.add_argument("ids", nargs="+")
    p.set_defaults(func=_run_why)


def _run_why(args: argparse.Namespace) -> int:
    from datadiet.pipeline.manifest import explain

    for line in explain(args.out, args.ids):
        print(line)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="tokenize a curated dataset into the token files training jobs read",
        description="Tokenize INPUT (a curated output, or any file/folder the reader takes) and "
        "write OUT/: tokens.bin (each document followed by end-of-text; uint16 when the "
        "vocabulary fits, else uint32) with tokens.json (nanoGPT-style memmap) and tokens.idx "
        "(Megatron-LM indexed dataset), and/or litdata/ (LitData, TokensLoader); "
        "OUT/manifest.json records the tokenizer and the counts.")
    p.add_argument("input", help="curated output folder, JSONL/Parquet/text file or folder")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder, model folder, or 'bytes' (default: SmolLM2's, offline)")
    p.add_argument("--format", default="megatron,memmap",
                   help="comma-separated: megatron, memmap, litdata (default: megatron,memmap)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="bad rows: stop with file:line (raise) or skip and count them (skip)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="tokenizer threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT written by datadiet export")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from datadiet.pipeline.tokens import export_tokens

    _arrow_pool_that_returns_memory()
    result = export_tokens(args.input, args.out, tokenizer=args.tokenizer,
                           formats=args.format.split(","), text_field=args.text_field,
                           id_field=args.id_field, on_error=args.on_error,
                           workers=args.workers, overwrite=args.overwrite)
    m = result.manifest
    print(f"wrote {args.out}/ ({m['documents']} documents, {m['tokens']} tokens, "
          f"{m['memmap']['dtype']}, tokenizer {m['tokenizer']['name']}; "
          f"formats: {', '.join(m['formats'])})")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="measure the saving end to end: curate, train full vs "
                       "curated, build compressed prompts; write report.md with plots")
    p.add_argument("--out", default="demo-out", help="where to write (default: demo-out)")
    p.add_argument("--steps", type=int, default=100, help="training steps of each run")
    p.add_argument("--prompts", type=int, default=6, help="SST-2 prompts to build (0: skip)")
    p.add_argument("--sft-steps", type=int, default=60,
                   help="fine-tuning steps of each arm (0: skip the fine-tuning stage)")
    p.add_argument("--data", default=None, help="the real-data kit (default: "
                   "$DATADIET_SHARED_DATA, else ../shared/data above the working folder)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from datadiet.experiments.corpus import data_kit

    data_kit(args.data)  # no kit: exit 2 before Prefect is even imported
    from datadiet.flows.demo import main as flow_demo

    return flow_demo(["--out", args.out, "--steps", str(args.steps),
                      "--prompts", str(args.prompts), "--sft-steps", str(args.sft_steps),
                      *(["--data", args.data] if args.data else [])])


#: Sub-commands whose parsers live in this module: parsing one of them imports nothing else.
CORE_COMMANDS = ("curate", "why", "export", "demo")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``datadiet`` parser; with ``argv`` naming a core command, only the core commands.

    Why: the other rooms' parsers come from their modules (serving imports pydantic,
    compression and training their own options), about 0.3 CPU-seconds of imports that
    ``datadiet curate`` of a small file would otherwise pay before reading a row. The
    command is the first argument (the top-level parser has no options besides ``--help``), so
    the choice cannot change how the rest of the line parses; ``--help`` and any other command
    get the whole parser.
    """
    parser = argparse.ArgumentParser(prog="datadiet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_curate(sub)
    _add_why(sub)
    _add_export(sub)
    _add_demo(sub)
    if argv is None or not argv or argv[0] not in CORE_COMMANDS:
        _add_optional(sub)
    return parser


def _add_optional(sub: argparse._SubParsersAction) -> None:
    """Sub-commands from the other rooms of the package (compression, training, inference)."""
    from datadiet.flows.serve import add_serve_parser
    from datadiet.pipeline.stages.cli import add_generate_parser, add_train_parser
    from datadiet.prompting.compression.cli import add_compress_parser
    from datadiet.prompting.icl import add_icl_parser

    add_serve_parser(sub)
    add_compress_parser(sub)
    add_icl_parser(sub)
    add_train_parser(sub)
    add_generate_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_caches_in_user_cache()  # before any command imports torch
    # Our own bars (with time left) are the ones that matter. Said by the environment, read
    # when ``datasets`` is imported, so a command that never needs ``datasets`` never imports it.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # called in a process that has imported it already
        sys.modules["datasets"].disable_progress_bars()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    from datadiet.pipeline.errors import UserError, is_no_space
    from datadiet.pipeline.io import Terminated, install_signal_cleanup

    install_signal_cleanup()  # SIGTERM unwinds like Ctrl-C, so temp data is removed
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if os.environ.get("DATADIET_DEBUG"):
            raise
        print(f"datadiet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not is_no_space(exc) or os.environ.get("DATADIET_DEBUG"):
            raise
        # a full disk where no writer named it (a library's own file): still the user's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"datadiet {args.command}: error: {where}no space left on the device "
              f"({exc.strerror or exc}); free space or point TMPDIR / --out / DATADIET_CACHE "
              "elsewhere", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated as exc:
        print("terminated; no output was written", file=sys.stderr)
        return int(exc.code or 143)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

