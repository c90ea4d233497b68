"""Reading corpora into Arrow and writing curated outputs atomically.

Why not ``datasets.load_dataset("json", ...)`` for local files: on a malformed line it raises an
error that names neither the file nor the line, it cannot skip-and-count bad rows, and it guesses
schemas. datadiet validates every record itself — JSON, UTF-8, the text field, its type — and
streams valid rows into a memory-mapped Arrow file in batches, so a corpus larger than RAM is read
in bounded memory and every skipped row is reported with its file and line.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datasets import Dataset

from datadiet.pipeline.records import (
    RecordFormat,
    detect_format,
    parse_fields,
    problem_with,
    render_text,
    with_text,
)

OnError = Literal["raise", "skip"]
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".md")
PARQUET_SUFFIXES = (".parquet",)
WRITE_BATCH_ROWS = 10_000


class DataError(ValueError):
    """Bad input: the message names the file and line (or row) and what is wrong."""


@dataclass
class SkippedRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class LoadedCorpus:
    """A corpus as a memory-mapped ``Dataset`` with ``id`` and text columns, plus what was skipped."""

    dataset: Dataset
    source: str
    fingerprint: str
    skipped: list[SkippedRow] = field(default_factory=list)
    skipped_count: int = 0
    record_format: RecordFormat | None = None

    def skipped_summary(self, limit: int = 20) -> dict[str, Any]:
        return {
            "count": self.skipped_count,
            "examples": [str(s) for s in self.skipped[:limit]],
        }


def content_id(text: str) -> str:
    """A stable id for a record without one: 16 hex digits of xxh3-64 of the text."""
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogatepass"))


class _RowSink:
    """Collects rows and streams them to an Arrow IPC file in batches (bounded memory)."""

    def __init__(self, path: Path, text_field: str, id_field: str, keep_fields: list[str]) -> None:
        self.path = path
        self.text_field = text_field
        self.id_field = id_field
        self.keep_fields = keep_fields
        self.columns: dict[str, list] = {c: [] for c in self.names}
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.rows = 0
        self._seen_ids: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return [self.id_field, self.text_field, *self.keep_fields]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c, pa.string()) for c in self.names])

    def carry(self, columns: Iterable[str]) -> None:
        """Also keep ``columns`` (a fine-tuning format's fields); only before the first row."""
        if self.rows:
            raise RuntimeError("columns to carry must be known before the first row")
        for col in columns:
            if col not in self.names:
                self.keep_fields.append(col)
                self.columns[col] = []

    def add(self, record_id: str | None, text: str, extra: dict[str, Any]) -> None:
        if record_id is None:
            record_id = content_id(text)
            # Identical texts share a hash; suffix repeats so ids stay unique per corpus.
            seen = self._seen_ids.get(record_id, 0)
            self._seen_ids[record_id] = seen + 1
            if seen:
                record_id = f"{record_id}-{seen + 1}"
        self.columns[self.id_field].append(record_id)
        self.columns[self.text_field].append(text)
        for name in self.keep_fields:
            value = extra.get(name)
            self.columns[name].append(
                None if value is None else value if isinstance(value, str) else json.dumps(value)
            )
        self.rows += 1
        if len(self.columns[self.id_field]) >= WRITE_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            self.writer = pa.ipc.new_stream(str(self.path), self.schema)
        if self.columns[self.id_field]:
            self.writer.write_batch(pa.record_batch(
                [pa.array(self.columns[c], pa.string()) for c in self.names], schema=self.schema
            ))
            self.columns = {c: [] for c in self.names}

    def close(self) -> Dataset:
        self.flush()
        self.writer.close()
        return Dataset.from_file(str(self.path))


class _Reader:
    """Validates records of one or more files, raising or skipping with file:line reasons."""

    def __init__(self, sink: _RowSink, on_error: OnError, fmt: RecordFormat | None = None) -> None:
        self.sink = sink
        self.on_error = on_error
        self.fmt = fmt  # None: decided by the first record (then every row must fit it)
        self.skipped: list[SkippedRow] = []
        self.skipped_count = 0
        if fmt is not None:
            self._use(fmt)

    def _use(self, fmt: RecordFormat) -> None:
        self.fmt = fmt
        if not fmt.is_text:
            self.sink.carry(fmt.data_columns)

    def _resolve(self, file: Path, line: int | str, keys: Iterable[str]) -> RecordFormat:
        if self.fmt is None:
            try:
                self._use(detect_format(keys, self.sink.text_field))
            except ValueError as exc:
                raise DataError(f"{file}:{line}: {exc}") from None
        return self.fmt  # type: ignore[return-value]

    def bad(self, file: Path, line: int, reason: str) -> None:
        if self.on_error == "raise":
            raise DataError(f"{file}:{line}: {reason} (use --on-error skip to skip such rows)")
        self.skipped_count += 1
        if len(self.skipped) < 1000:
            self.skipped.append(SkippedRow(str(file), line, reason))

    def take(self, file: Path, line: int, record: Any) -> None:
        sink = self.sink
        if not isinstance(record, dict):
            self.bad(file, line, f"expected a JSON object, got {type(record).__name__}")
            return
        fmt = self._resolve(file, line, record)
        problem = problem_with(record, fmt)
        if problem:
            self.bad(file, line, problem)
            return
        if not fmt.is_text and sink.text_field in record:
            self.bad(file, line, f"field {sink.text_field!r} would be replaced by the rendered "
                     f"{fmt.kind} record; pass another --text-field")
            return
        text = render_text(record, fmt)
        rid = record.get(sink.id_field)
        sink.add(None if rid is None else str(rid), text, record)

    def read_jsonl(self, path: Path) -> None:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.bad(path, lineno, f"invalid UTF-8 at byte {exc.start}")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.bad(path, lineno, f"malformed JSON: {exc.msg} at column {exc.colno}")
                    continue
                self.take(path, lineno, record)

    def read_text(self, path: Path) -> None:
        """One document per blank-line-separated block; the block's first line is its line."""
        opener = gzip.open if path.name.endswith(".gz") else open
        block: list[str] = []
        bad_block = False

        def emit() -> None:
            text = "\n".join(block).strip()
            if text and not bad_block:
                self.sink.add(None, text, {})

        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    self.bad(path, lineno, f"invalid UTF-8 at byte {exc.start}")
                    bad_block = True
                    block.append("")
                    continue
                if line.strip():
                    block.append(line)
                elif block:
                    emit()
                    block, bad_block = [], False
            if block:
                emit()

    def read_parquet(self, path: Path) -> None:
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        names = pf.schema_arrow.names
        if self.fmt is None and self.sink.text_field not in names:
            try:
                self._use(detect_format(names, self.sink.text_field, noun="columns"))
            except ValueError as exc:
                raise DataError(f"{path}: {exc}") from None
        fmt = self.fmt or RecordFormat.default("text", self.sink.text_field)
        if fmt.is_text and self.sink.text_field not in names:
            raise DataError(
                f"{path}: missing text field {self.sink.text_field!r} (columns: {', '.join(names)})"
            )
        wanted = [c for c in dict.fromkeys([*fmt.data_columns, self.sink.id_field,
                                            *self.sink.keep_fields]) if c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=WRITE_BATCH_ROWS, columns=wanted):
            for record in batch.to_pylist():
                row += 1
                if fmt.is_text and record.get(self.sink.text_field) is None:
                    self.bad(path, row, f"field {self.sink.text_field!r} is null")
                    continue
                self.take(path, row, record)


def _list_files(root: Path) -> list[Path]:
    suffixes = JSONL_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes)
                   and "removed" not in p.relative_to(root).parts)
    if not files:
        raise DataError(f"{root}: no .jsonl, .json(.gz), .parquet or .txt files in this folder")
    return files


def fingerprint_files(files: Iterable[Path]) -> str:
    """xxh3-128 over every input byte (and names), so a manifest pins its exact input."""
    h = xxhash.xxh3_128()
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "state.json").exists()


def source_fingerprint(source: str | os.PathLike) -> str:
    """The fingerprint ``load_corpus`` would record for ``source``, without parsing it.

    Why: a scheduler (the Prefect flows) decides whether a cached run still holds by comparing
    fingerprints, and that check must cost one pass over the bytes, not a parse into Arrow.
    A hub id has no local bytes, so its name stands for it.
    """
    path = Path(source).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        return fingerprint_files(sorted(p for p in path.rglob("*") if p.is_file()))
    if path.exists():
        return fingerprint_files(_list_files(path) if path.is_dir() else [path])
    if "/" in str(source) and not str(source).startswith((".", "/")):
        return f"hf://{source}"
    raise DataError(f"{source}: no such file or folder")


def load_corpus(
    source: str | os.PathLike,
    *,
    text_field: str = "text",
    id_field: str = "id",
    keep_fields: Iterable[str] = (),
    on_error: OnError = "raise",
    split: str = "train",
    work_dir: str | os.PathLike | None = None,
    fields: RecordFormat | str | dict | None = "auto",
) -> LoadedCorpus:
    """Load JSONL(.gz) / Parquet / text files or folders, a saved dataset, or a hub id.

    The result always has an ``id_field`` column (from the data, or a content hash) and the
    text column, plus any ``keep_fields`` carried as strings. ``fields`` says how to read
    records (see :mod:`datadiet.pipeline.records`): ``"auto"`` takes the text field if the first
    record has one, else the fine-tuning format its fields fit; a format name or a mapping
    fixes it. For fine-tuning records the text column holds the rendered row (what the
    pre-training steps read), and the format's own columns are carried along.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    fmt = fields if isinstance(fields, RecordFormat) else parse_fields(fields, text_field)
    path = Path(source).expanduser()
    keep = [f for f in keep_fields if f not in (text_field, id_field)]
    if path.is_dir() and _is_saved_dataset(path):
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (splits: {', '.join(ds.keys())})")
            ds = ds[split]
        return _from_dataset(ds, str(path), text_field, id_field, keep, fmt)
    if path.exists():
        files = _list_files(path) if path.is_dir() else [path]
        for f in files:
            if f.stat().st_size == 0:
                if on_error == "raise":
                    raise DataError(f"{f}: empty file (no records)")
        work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="datadiet-load-"))
        work.mkdir(parents=True, exist_ok=True)
        sink = _RowSink(work / f"corpus-{uuid.uuid4().hex[:8]}.arrow", text_field, id_field, keep)
        reader = _Reader(sink, on_error, fmt)
        try:
            for f in files:
                name = f.name
                if name.endswith(JSONL_SUFFIXES):
                    reader.read_jsonl(f)
                elif name.endswith(PARQUET_SUFFIXES):
                    reader.read_parquet(f)
                elif name.endswith(TEXT_SUFFIXES) or path.is_file():
                    reader.read_text(f)
        finally:
            ds = sink.close()
        if len(ds) == 0:
            raise DataError(f"{path}: no records could be read"
                            + (f" ({reader.skipped_count} skipped)" if reader.skipped_count else ""))
        return LoadedCorpus(ds, str(path), fingerprint_files(files), reader.skipped,
                            reader.skipped_count, reader.fmt)
    if "/" in str(source) and not str(source).startswith((".", "/")):
        return _load_hub(str(source), split, text_field, id_field, keep, fmt)
    raise DataError(f"{source}: no such file or folder")


def _load_hub(name: str, split: str, text_field: str, id_field: str, keep: list[str],
              fmt: RecordFormat | None) -> LoadedCorpus:
    """A Hugging Face hub dataset id; offline this fails with a message that says so."""
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split)
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError...
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: the hub is disabled)" if offline else ""
        raise DataError(
            f"{name}: not a local path, and loading it from the Hugging Face hub failed{hint}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return _from_dataset(ds, f"hf://{name}:{split}", text_field, id_field, keep, fmt)


def _from_dataset(ds: Dataset, source: str, text_field: str, id_field: str,
                  keep: list[str], fmt: RecordFormat | None = None) -> LoadedCorpus:
    if fmt is None:
        try:
            fmt = detect_format(ds.column_names, text_field, noun="columns")
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from None
    if not fmt.is_text:
        try:
            ds = with_text(ds, fmt, text_field)
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from None
        keep = [*fmt.data_columns, *keep]
    if text_field not in ds.column_names:
        raise DataError(
            f"{source}: missing text field {text_field!r} (columns: {', '.join(ds.column_names)})"
        )
    if id_field not in ds.column_names:
        ds = ds.map(lambda b: {id_field: [content_id(t or "") for t in b[text_field]]},
                    batched=True, desc="hashing ids")
    keep = [k for k in dict.fromkeys(keep) if k in ds.column_names and k not in (id_field, text_field)]
    ds = ds.select_columns([id_field, text_field, *keep])
    return LoadedCorpus(ds, source, ds._fingerprint, record_format=fmt)


# -- writing --------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path, is_dir: bool) -> None:
    """Give a temp file or folder the mode a plain ``open``/``mkdir`` would have given it.

    ``mkstemp``/``mkdtemp`` create 0600/0700 on purpose; an output that a training job under
    another user must read has to follow the umask like any other file writer.
    """
    base = 0o777 if is_dir else 0o666
    os.chmod(path, base & ~_umask())


@contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """THE atomic writer: yield a hidden temp path beside ``target``; rename onto it on success.

    Every file or folder datadiet writes goes through here (text, JSON, Parquet shards,
    checkpoints, converted models), so a crash or a signal never leaves a half-written output:
    the temp path is removed on any exception (``KeyboardInterrupt`` and the ``SystemExit``
    that :func:`install_signal_cleanup` raises for SIGTERM included). An existing folder target
    is swapped out by rename and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        follow_umask(tmp, is_dir)
        if is_dir and target.exists():
            backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def write_parquet_shards(ds: Dataset, folder: Path, rows_per_shard: int = 100_000,
                         prefix: str = "data") -> list[str]:
    """Write ``ds`` as ``{prefix}-00000-of-0000N.parquet`` shards; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(ds)
    n_shards = max(1, -(-n // rows_per_shard))
    names = []
    for i in range(n_shards):
        shard = ds.select(range(i * rows_per_shard, min(n, (i + 1) * rows_per_shard)))
        name = f"{prefix}-{i:05d}-of-{n_shards:05d}.parquet"
        shard.to_parquet(str(folder / name))
        names.append(name)
    return names


class AtomicOutputDir:
    """An output folder written through :func:`atomic_path`, refusing to replace by accident.

    An existing output is replaced only with ``overwrite=True``; the old one stays intact until
    the new one is complete.
    """

    def __init__(self, target: str | os.PathLike, overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self._ctx: Any = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise FileExistsError(f"{self.target}: output exists (pass --overwrite to replace it)")
        self._ctx = atomic_path(self.target, is_dir=True)
        return self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Small helper for tests and tools: parsed records of a (gz) JSONL file."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
