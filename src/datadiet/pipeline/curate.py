"""The curation runner: steps in order, a manifest that says what was removed and why.

``curate(dataset, steps)`` is the Python API; ``datadiet curate`` is the same call plus reading
and atomic writing. Each step returns a Selection on the rows still alive; the runner keeps an
index back to the input so that every removed row is reported against its original id, and the
manifest carries the whole spec so a run can be repeated from it.
"""

from __future__ import annotations

import collections.abc
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from datadiet import __version__
from datadiet.pipeline.card import write_curated_metadata
from datadiet.pipeline.config_files import read_config_file
from datadiet.pipeline.executors import (
    Executor,
    LocalExecutor,
    Plan,
    PlannedStep,
)
from datadiet.pipeline.io import (
    LEGACY_MANIFEST_FILE,
    AtomicOutputDir,
    LoadedCorpus,
    OnError,
    ReadReport,
    SpecError,
    StreamedCorpus,
    arrow_floats,
    arrow_ints,
    arrow_repeated,
    as_dataset,
    check_output_dir,
    corpus_from_records,
    find_manifest,
    load_corpus,
    looks_local,
    reads_as_files,
    scratch_dir,
    write_batch_shards,
    write_parquet_shards,
)
from datadiet.pipeline.manifest import Manifest, StepReport, jsonable
from datadiet.pipeline.memory import release_unused_memory
from datadiet.pipeline.records import RecordFormat, parse_fields, restore_messages, sft_format
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import (
    STEP_REGISTRY,
    Step,
    StepContext,
    build_step,
    load_builtin_steps,
)

#: The runner's progress hook: called with (phases done, phases in all), where the phases are
#: the read and then each step's reduce, so a scheduler's progress bar moves as the run does.
Progress = Callable[[int, int], None]

if TYPE_CHECKING:
    from datasets import Dataset


def parse_spec(spec: Any, source: str = "spec") -> list[tuple[str, dict[str, Any]]]:
    """Accept the YAML list form ``[{step: {params}}, ...]``, ``{"steps": [...]}``, or a manifest.

    Errors name the entry, so a typo in entry 3 says "entry 3".
    """
    if isinstance(spec, dict) and "spec" in spec and "steps" in spec:  # a manifest
        spec = spec["spec"]
    elif isinstance(spec, dict) and "steps" in spec:
        spec = spec["steps"]
    if not isinstance(spec, list) or not spec:
        raise SpecError(f"{source}: expected a non-empty list of steps like `- exact_dedup: {{}}`")
    parsed = []
    for i, entry in enumerate(spec, start=1):
        if isinstance(entry, str):
            parsed.append((entry, {}))
            continue
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SpecError(f"{source}: entry {i} must be a mapping with one step name, got {entry!r}")
        (name, params), = entry.items()
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise SpecError(f"{source}: entry {i} ({name}): parameters must be a mapping")
        parsed.append((str(name), dict(params)))
    return parsed


def read_spec(path: str | os.PathLike) -> Any:
    """The parsed YAML/JSON of a spec file; every way it can be unreadable is a SpecError.

    A curated output folder stands for its manifest (the run it repeats); so does the path of
    the older layout's top-level ``manifest.json``, where the folder has the newer layout.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name == LEGACY_MANIFEST_FILE \
        and not path.exists() else None
    if folder is not None and (manifest := find_manifest(folder)) is not None:
        path = manifest
    return read_config_file(path, "spec file")


def load_spec(path: str | os.PathLike) -> list[Step]:
    """Read a YAML/JSON spec file (or a manifest) into step objects, every parameter checked."""
    data = read_spec(path)
    return [_build(name, params, f"{path}: entry {i}")
            for i, (name, params) in enumerate(parse_spec(data, str(path)), start=1)]


def load_spec_fields(path: str | os.PathLike) -> RecordFormat | None:
    """The spec's ``fields:`` entry (how to read fine-tuning records); ``None`` means detect.

    A manifest given as the spec repeats the format its run read.
    """
    data = read_spec(path)
    if not isinstance(data, dict):
        return None
    value = data.get("fields")
    if value is None and "spec" in data:
        value = (data.get("input") or {}).get("record_format")
    try:
        return parse_fields(value)
    except ValueError as exc:
        raise SpecError(f"{path}: {exc}") from None


def score_column(step_name: str, columns: Sequence[str]) -> str:
    """The output column of a step's scores: ``<step>_score``, numbered if taken."""
    name, n = f"{step_name}_score", 1
    while name in columns:
        n += 1
        name = f"{step_name}_score_{n}"
    return name


def _build(name: str, params: dict[str, Any], where: str) -> Step:
    """One spec entry as a step: unknown names, unknown or mistyped parameters and values the
    step itself rejects are all a :class:`SpecError` here, before any step runs."""
    try:
        if name in STEP_REGISTRY or _registered(name):
            check_param_types(STEP_REGISTRY[name], params)
        return build_step(name, params)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except (ValueError, TypeError) as exc:  # a step's constructor validating its parameters
        raise SpecError(f"{where}: {exc}") from None


def _registered(name: str) -> bool:
    load_builtin_steps()
    return name in STEP_REGISTRY


def check_param_types(cls: type[Step], params: dict[str, Any]) -> None:
    """Check each parameter against the step constructor's type hints.

    Why here and not in each step: a spec is YAML, so ``seed: abc`` arrives as a string and
    used to fail in the middle of the run (after the earlier steps' work). The hints are the
    one place every step already states what it accepts.
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a hint that cannot be resolved: leave the checking to the step
        return
    for key, value in params.items():
        if key in hints and not _matches(value, hints[key]):
            raise SpecError(f"parameter {key!r} of step {cls.name!r}: expected "
                            f"{_describe(hints[key])}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, set, frozenset, Sequence, Iterable, collections.abc.Set):
        if isinstance(value, str | bytes | dict) or not isinstance(value, list | tuple | set):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return True  # a fixed-length tuple: the step checks its parts
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (dict, Mapping, collections.abc.MutableMapping):
        return isinstance(value, dict)
    return True  # a type the spec cannot express (a path object, a callable): the step checks


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def referenced_paths(steps: Sequence[Step]) -> list[Path]:
    """Local files a spec's parameters name (DSIR targets...): inputs an output must not hit."""
    paths = []
    for step in steps:
        for value in step.params().values():
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, str | os.PathLike) and looks_local(item) \
                        and Path(item).expanduser().exists():
                    paths.append(Path(item))
    return paths


def check_step_paths(steps: Sequence[Step], out: str | os.PathLike | None = None) -> None:
    """The folders steps write (score caches) are folders, and not the run's output or in it.

    Why before the run: a cache inside ``--out`` was found only at the final swap, after the
    scoring, and left a ``scores.sqlite`` there that ``--overwrite`` then refused.
    """
    target = Path(out).expanduser().resolve() if out is not None else None
    for i, step in enumerate(steps, start=1):
        for folder in step.writes_paths():
            where = f"entry {i} ({step.name}): {folder}"
            if folder.exists() and not folder.is_dir():
                raise SpecError(f"{where}: is a file; the cache must be a folder")
            resolved = folder.resolve()
            if target is not None and (resolved == target or target in resolved.parents):
                raise SpecError(f"{where}: the cache is the run's --out or inside it; the "
                                "output folder is replaced as a whole, so keep the cache "
                                "elsewhere")


def check_plan(steps: Sequence[Step], columns: Sequence[str], fmt: RecordFormat | None,
               text_field: str = "text") -> None:
    """Every column a step reads will be there when it runs, and every step that needs
    instruction data has it — checked on the input's columns before any step runs (so before
    any model loads), each step's score column added as the runner will add it."""
    cols = list(columns)
    for i, step in enumerate(steps, start=1):
        if step.needs_instruction_data:
            try:
                sft_format(cols, fmt, text_field, step=step.name)
            except ValueError as exc:
                raise SpecError(f"entry {i}: {exc}") from None
        for column in step.reads_columns():
            if column not in cols:
                scored = [c for c in cols if c.endswith("_score")]
                raise SpecError(
                    f"entry {i} ({step.name}): no column {column!r} in the input nor from an "
                    f"earlier step (score columns by then: {', '.join(scored) or 'none'}; a "
                    "scoring step such as ifd or judge writes <step>_score)")
        if step.writes_score:
            cols.append(score_column(step.name, cols))


def spec_of(steps: Sequence[Step]) -> list[dict[str, dict[str, Any]]]:
    return [{s.name: jsonable(s.params())} for s in steps]


# -- running --------------------------------------------------------------------------------


@dataclass
class CurateResult:
    """What a run produced: the kept rows, the manifest, and every removed row with its reason.

    A run on a ``Dataset`` holds the kept rows as one (``given_dataset``). A streamed
    ``curate_path`` run holds the kept input row numbers and reads the rows it wrote from
    ``output_dir`` only when :attr:`dataset` is asked for, so ``datadiet curate`` never imports
    ``datasets`` nor holds the corpus in memory.
    """

    manifest: Manifest
    removed: pa.Table  # id, step, reason, for every removed row
    given_dataset: Dataset | None = None
    kept_rows: np.ndarray | None = None  # input rows kept, in input order (streamed runs)
    output_dir: Path | None = None

    @property
    def dataset(self) -> Dataset:
        """The kept rows as a ``datasets.Dataset``."""
        if self.given_dataset is None:
            assert self.output_dir is not None
            shards = [self.output_dir / name for name in self.manifest.output["shards"]]
            self.given_dataset = as_dataset(pa.concat_tables(pq.read_table(p) for p in shards),
                                            self.manifest.output["fingerprint"])
        return self.given_dataset

    @property
    def rows_kept(self) -> int:
        return len(self.kept_rows) if self.kept_rows is not None else len(self.dataset)

    def why(self, record_id: str) -> str | None:
        """The reason a record was removed, or None if it was kept (or never existed)."""
        ids = self.removed.column("id").to_pylist()
        if record_id in ids:
            i = ids.index(record_id)
            return f"{self.removed.column('step')[i].as_py()}: {self.removed.column('reason')[i].as_py()}"
        return None


def build_steps(steps: Sequence[Step | str | dict]) -> list[Step]:
    """Step objects from Step objects, step names or ``{name: params}`` mappings, all checked."""
    built: list[Step] = []
    for i, s in enumerate(steps, start=1):
        if isinstance(s, Step):
            built.append(s)
        elif isinstance(s, str):
            built.append(_build(s, {}, f"steps[{i}]"))
        else:
            (name, params), = parse_spec([s], f"steps[{i}]")
            built.append(_build(name, params, f"steps[{i}]"))
    if not built:
        raise SpecError("no steps: give at least one, e.g. ['exact_dedup']")
    return built


def curate(
    dataset: Dataset | Sequence[Mapping[str, Any]],
    steps: Sequence[Step | str | dict],
    *,
    text_field: str = "text",
    id_field: str = "id",
    ctx: StepContext | None = None,
    show_progress: bool = False,
    input_info: dict[str, Any] | None = None,
    on_duplicate_id: str = "error",
    fields: RecordFormat | str | dict | None = None,
) -> CurateResult:
    """Run ``steps`` in order on ``dataset``; return the kept rows, the manifest and removals.

    ``dataset`` is a ``datasets.Dataset`` or a list of dicts; either way it gets the reader's
    checks (a string text column) and its id rule (unique ids, content hashes with ``-2``,
    ``-3`` for repeats). ``steps`` may be Step objects, step names, or ``{name: params}``.
    An instruction dataset (``fields``, or detected from its columns) gets the rendered row as
    its text column. Every step's scores become a column ``<step>_score`` of the output and of
    the removed table, so later steps (``deita``) and the user can read them.

    The runner keeps the one Arrow copy it was given and a NumPy index of the rows still
    alive: each step sees a zero-copy view (an indices mapping) of those rows, and its
    Selection shrinks the index; nothing is rewritten between steps. Counts and seconds in the
    manifest are the runner's, so every step reports them the same way. Scratch files of the
    steps live in one temp folder that is removed when the run ends, however it ends.
    """
    built = build_steps(steps)
    try:
        fmt = fields if isinstance(fields, RecordFormat) else parse_fields(fields, text_field)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if fmt is None and ctx is not None:
        fmt = ctx.record_format
    loaded = corpus_from_records(dataset, text_field=text_field, id_field=id_field,
                                 on_duplicate_id=on_duplicate_id, fields=fmt)
    info = {"rows": loaded.rows, "fingerprint": loaded.fingerprint,
            "renamed_ids": loaded.renamed_ids, **(input_info or {})}
    ctx = ctx or StepContext(text_field=text_field, id_field=id_field, show_progress=show_progress)
    ctx.text_field, ctx.id_field = text_field, id_field
    ctx.record_format = loaded.record_format
    return _curate(loaded.dataset, built, ctx, info)


def _curate(dataset: Dataset, built: list[Step], ctx: StepContext,
            info: dict[str, Any], progress: Progress | None = None) -> CurateResult:
    """Run checked steps on a checked dataset, in a scratch folder that never outlives the run."""
    check_plan(built, dataset.column_names, ctx.record_format, ctx.text_field)
    manifest = Manifest(input=info, spec=spec_of(built), datadiet_version=__version__)
    if ctx.work_dir is not None:
        return _run_steps(dataset, built, ctx, manifest, progress)
    with scratch_dir("datadiet-run-") as work:
        ctx.work_dir = work
        try:
            return _run_steps(dataset, built, ctx, manifest, progress)
        finally:
            ctx.work_dir = None


class _StepBook:
    """What the runner writes down for each step, whichever rows it ran on: the manifest
    entry, every removed row with its input row, id and reason, and each score column."""

    def __init__(self, ids: pa.ChunkedArray, manifest: Manifest, ctx: StepContext) -> None:
        self.ids = ids
        self.n = len(ids)
        self.manifest = manifest
        self.ledger = ctx.ledger
        self.removed_batches: list[pa.Table] = []
        self.scores: dict[str, np.ndarray] = {}  # column -> a value per input row (NaN: not scored)

    def score(self, column: str, selection: Selection, alive: np.ndarray) -> np.ndarray | None:
        """The step's scores as a column over all input rows, or None if it gave none."""
        if selection.scores is None or np.isnan(selection.scores).all():
            return None
        self.scores[column] = np.full(self.n, np.nan)
        self.scores[column][alive] = np.asarray(selection.scores, dtype=np.float64)
        return self.scores[column]

    def record(self, step: Step, selection: Selection, alive: np.ndarray, rec: Any,
               seconds: float, before: Any) -> np.ndarray:
        """Write the step down; returns the input rows still alive after it."""
        if selection.n_rows != len(alive):
            raise RuntimeError(f"step {step.name} returned {selection.n_rows} rows, "
                               f"saw {len(alive)}")
        after = self.ledger.total
        removed_idx = selection.removed_indices
        if len(removed_idx):
            rows = alive[removed_idx]
            self.removed_batches.append(pa.table({
                "id": self.ids.take(arrow_ints(rows)).cast(pa.string()),
                "input_row": arrow_ints(rows),
                "step": arrow_repeated(step.name, len(removed_idx)),
                "reason": selection.reasons(removed_idx),
                **{c: arrow_floats(v[rows]) for c, v in self.scores.items()},
            }))
        kept = selection.kept_indices
        self.manifest.steps.append(StepReport(
            name=step.name,
            params=jsonable(step.params()),
            rows_in=len(alive),
            rows_out=len(kept),
            removed=selection.removed_by_kind(),
            seconds=round(seconds, 4),  # model loading is its own stage
            tokens_scored=after.tokens - before.tokens,
            flops=after.flops - before.flops,
            peak_memory_bytes=rec.peak_memory_bytes,
            stats=jsonable(selection.stats),
        ))
        return alive[kept]

    def finish(self, rows_out: int) -> pa.Table:
        """Close the manifest; returns the table of removed rows."""
        self.manifest.output = {"rows": rows_out}
        self.manifest.ledger = self.ledger.to_dict()
        if self.removed_batches:
            return pa.concat_tables(self.removed_batches, promote_options="default")
        return pa.schema([("id", pa.string()), ("input_row", pa.int64()), ("step", pa.string()),
                          ("reason", pa.string())]).empty_table()


def _run_steps(dataset: Dataset, built: list[Step], ctx: StepContext,
               manifest: Manifest, progress: Progress | None = None) -> CurateResult:
    n = len(dataset)
    ids = dataset.select_columns([ctx.id_field]).with_format("arrow")[:][ctx.id_field]
    book = _StepBook(ids, manifest, ctx)
    alive = np.arange(n, dtype=np.int64)  # input rows still kept, in input order
    for index, step in enumerate(built):
        view = dataset if len(alive) == n else dataset.select(alive)
        before = ctx.ledger.total
        with ctx.ledger.stage(f"step:{step.name}") as rec:
            seconds_before = rec.seconds  # a repeated step name accumulates on one stage
            selection = step.select(view, ctx)
        column = score_column(step.name, dataset.column_names)
        scores = book.score(column, selection, alive)
        if scores is not None:  # a zero-copy column of the one table, so later steps can read it
            dataset = dataset.add_column(column, scores)
        alive = book.record(step, selection, alive, rec, rec.seconds - seconds_before, before)
        if progress is not None:
            progress(2 + index, 1 + len(built))
    result_ds = dataset if len(alive) == n else dataset.select(alive)
    removed = book.finish(len(result_ds))
    return CurateResult(manifest, removed, given_dataset=result_ds)


def _curate_streamed(source: str | os.PathLike, built: list[Step], out: str | os.PathLike,
                     ctx: StepContext, options: dict[str, Any], overwrite: bool,
                     rows_per_shard: int, executor: Executor | None = None,
                     progress: Progress | None = None) -> CurateResult:
    """``curate_path`` for a plan whose steps are all a per-row map plus a reduce: the
    executor reads the corpus (running the read-time maps) and gives each step's Selection
    over the rows still alive; this loop books them, and the one writer writes the kept rows,
    read back from the scratch copy batch by batch. Memory in this process: a few batches, the
    ids and a few bytes per row, plus whatever features the executor keeps here (the local
    one keeps them all, spilled to scratch past ``SPILL_BYTES``; Dask keeps them on workers)."""
    executor = executor or LocalExecutor()

    def check(columns: Sequence[str], fmt: RecordFormat | None) -> None:
        check_plan(built, columns, fmt, ctx.text_field)

    plan = Plan.compile(built, check)  # checked by the executor before the first map
    callers_work_dir = ctx.work_dir
    with scratch_dir("datadiet-run-", callers_work_dir) as work:
        ctx.work_dir = work
        try:
            corpus = executor.read(source, plan, work, options, ctx)
            release_unused_memory()  # the read's batches, freed but held by the allocators
            phases = 1 + len(plan.steps)
            if progress is not None:
                progress(1, phases)
            manifest = Manifest(input=_input_info(corpus, options), spec=spec_of(built),
                                datadiet_version=__version__)
            book = _StepBook(pa.chunked_array([corpus.ids]), manifest, ctx)
            alive = np.arange(corpus.rows, dtype=np.int64)
            for planned in plan.steps:
                alive = _reduce_step(executor, planned, corpus, alive, book, ctx)
                release_unused_memory()  # its working arrays, before the next step's
                if progress is not None:
                    progress(2 + planned.index, phases)
            executor.close()
            removed = book.finish(len(alive))
            _write_streamed(corpus, alive, book, manifest, removed, ctx, out, overwrite,
                            rows_per_shard)
        finally:
            executor.close()
            ctx.work_dir = callers_work_dir
    return CurateResult(manifest, removed, kept_rows=alive, output_dir=Path(out))


def _reduce_step(executor: Executor, planned: PlannedStep, corpus: StreamedCorpus,
                 alive: np.ndarray, book: _StepBook, ctx: StepContext) -> np.ndarray:
    """One step's reduce on the live rows (the executor maps a deferred step first); returns
    the rows alive after it. Its seconds: its maps plus this."""
    step, n = planned.step, corpus.rows
    before = ctx.ledger.total
    with ctx.ledger.stage(f"step:{step.name}") as rec:
        seconds_before = rec.seconds
        named = pa.table({ctx.id_field: corpus.ids if len(alive) == n
                          else corpus.ids.take(arrow_ints(alive)),
                          **_read_columns(step, corpus, alive, book)})
        selection, map_seconds = executor.reduce(planned, alive, named, ctx)
    rec.seconds += map_seconds  # its maps ran during the read
    book.score(score_column(step.name, corpus.schema.names), selection, alive)
    return book.record(step, selection, alive, rec, rec.seconds - seconds_before, before)


def _read_columns(step: Step, corpus: StreamedCorpus, alive: np.ndarray,
                  book: _StepBook) -> dict[str, pa.Array]:
    """The columns a step reads (``reads_columns``) over the live rows, for its reduce: an
    earlier step's scores (held here, 8 bytes a row), or the input's column, read back from
    the scratch copy."""
    out: dict[str, pa.Array] = {}
    for column in step.reads_columns():
        if column in book.scores:
            out[column] = arrow_floats(book.scores[column][alive])
        elif column in corpus.schema.names:
            values = pa.chunked_array([b.column(column) for b in corpus.batches()],
                                      corpus.schema.field(column).type)
            out[column] = values.take(arrow_ints(alive)).combine_chunks()
    return out


def _write_streamed(corpus: StreamedCorpus, alive: np.ndarray, book: _StepBook,
                    manifest: Manifest, removed: pa.Table, ctx: StepContext,
                    out: str | os.PathLike, overwrite: bool, rows_per_shard: int) -> None:
    """The output folder, atomically: kept rows (read back from the scratch copy), removals,
    manifest."""
    keep = np.zeros(corpus.rows, bool)
    keep[alive] = True
    fmt = corpus.record_format
    drop = [ctx.text_field] if fmt is not None and not fmt.is_text else []  # our rendering
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        shards = write_batch_shards(corpus.batches(), keep, tmp, rows_per_shard, drop=drop,
                                    extra=book.scores,
                                    transform=lambda table: restore_messages(table, fmt))
        manifest.output = {
            "rows": len(alive),
            "shards": shards,
            "fingerprint": xxhash.xxh3_128_hexdigest(
                f"{corpus.fingerprint}|{manifest.spec}|".encode() + alive.tobytes()),
        }
        write_curated_metadata(tmp, manifest, removed)


def _input_info(corpus: ReadReport, options: dict[str, Any]) -> dict[str, Any]:
    """The manifest's account of the input: where from, how read, what was skipped."""
    fmt = corpus.record_format
    return {
        "source": corpus.source,
        "fingerprint": corpus.fingerprint,
        "rows": corpus.rows,
        "text_field": options["text_field"],
        "id_field": options["id_field"],
        "on_error": options["on_error"],
        "skipped": corpus.skipped_summary(),
        "renamed_ids": corpus.renamed_ids,
        "record_format": fmt.describe() if fmt else None,
    }


def curate_path(
    source: str | os.PathLike,
    steps: Sequence[Step | str | dict],
    out: str | os.PathLike,
    *,
    text_field: str = "text",
    id_field: str = "id",
    keep_fields: Sequence[str] = (),
    on_error: OnError = "raise",
    on_duplicate_id: str = "error",
    overwrite: bool = False,
    rows_per_shard: int = 100_000,
    show_progress: bool = True,
    ctx: StepContext | None = None,
    fields: RecordFormat | str | dict | None = "auto",
    executor: Executor | None = None,
    on_progress: Progress | None = None,
) -> CurateResult:
    """Read ``source``, curate, write ``out/`` (Parquet shards, manifest, removals) atomically.

    ``executor`` says where the maps and reduces run (:mod:`datadiet.pipeline.executors`):
    in this process by default, or e.g. a :class:`~datadiet.pipeline.executors.dask.
    DaskExecutor` on a cluster. Every spec read from files streams through it; a source that
    is not files (a saved dataset, a hub id) is loaded as a ``Dataset`` and curated in this
    process (:func:`curate`), with the same steps' maps and reduces.

    ``on_progress(done, phases)`` hears of each phase as it ends: the read, then each step's
    reduce (a flow's progress artifact; the terminal has its progress bars).

    ``fields`` says how to read records (see :func:`~datadiet.pipeline.io.load_corpus`); for
    fine-tuning records the output keeps the input's columns, not the rendered text.

    Everything that can be checked is checked before reading a row: the steps and their
    parameters, the files they reference, and the output (not an input, not a folder of the
    user's, writable). The output is written once, at the end, from the rows still alive.
    """
    built = build_steps(steps)
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise SpecError(f"--rows-per-shard: must be a whole number of at least 1, "
                        f"not {rows_per_shard!r}")
    check_output_dir(out, [source, *referenced_paths(built)], overwrite=overwrite)
    check_step_paths(built, out)
    options = {"text_field": text_field, "id_field": id_field, "keep_fields": keep_fields,
               "on_error": on_error, "on_duplicate_id": on_duplicate_id, "fields": fields}
    ctx = ctx or StepContext(text_field=text_field, id_field=id_field, show_progress=show_progress)
    ctx.text_field, ctx.id_field = text_field, id_field
    if reads_as_files(source):
        if without_map := Plan.compile(built).without_map:
            raise SpecError(f"step(s) {', '.join(without_map)} have no map/reduce split "
                            "(record_features and select_from_features), which every step "
                            "run on files needs")
        return _curate_streamed(source, built, out, ctx, options, overwrite, rows_per_shard,
                                executor, on_progress)
    if executor is not None and not isinstance(executor, LocalExecutor):
        raise SpecError(f"{type(executor).__name__} runs on files; {source} is not a file or "
                        "folder of files")
    loaded: LoadedCorpus = load_corpus(source, **options)
    if on_progress is not None:
        on_progress(1, 1 + len(built))
    fmt = loaded.record_format
    ctx.record_format = fmt
    result = _curate(loaded.dataset, built, ctx, _input_info(loaded, options), on_progress)
    written = result.dataset
    if fmt is not None and not fmt.is_text:  # the text column is our rendering, not the input's
        written = written.remove_columns(text_field)
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        shards = write_parquet_shards(written, tmp, rows_per_shard,
                                      transform=lambda table: restore_messages(table, fmt))
        result.manifest.output = {
            "rows": len(result.dataset),
            "shards": shards,
            "fingerprint": result.dataset._fingerprint,
        }
        write_curated_metadata(tmp, result.manifest, result.removed)
    return result


def print_report(manifest: Manifest, stream: Any = None) -> None:
    print(manifest.summary_table(), file=stream or sys.stdout)
