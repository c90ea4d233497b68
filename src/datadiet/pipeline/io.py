"""Reading corpora into Arrow and writing outputs atomically: the one reader, the one writer.

Why not ``datasets.load_dataset("json", ...)`` for local files: on a malformed line it raises an
error that names neither the file nor the line, it cannot skip-and-count bad rows, and it guesses
schemas. datadiet reads every input itself, at two speeds:

* well-formed JSONL and Parquet go through pyarrow's C++ readers, a block at a time;
* a block that fails (or looks odd: a line that is not an object, a null text) goes through the
  line-by-line validator, whose only jobs are to name the bad line (``file:line``) or, with
  ``on_error="skip"``, to skip and count it.

Each input byte is read once: the block that is parsed is the block that is fingerprinted.
Validated rows stream into one Arrow file that is memory-mapped and unlinked at once, so a
corpus larger than RAM is read in bounded memory and nothing is left in ``$TMPDIR``.

Ids follow one rule on every input path (files, a ``Dataset``, a list of dicts, a
``save_to_disk`` folder, the hub): a source id, or a content hash with ``-2``, ``-3`` for
repeats. A repeated source id is an error that names both rows, unless the caller asks for
``on_duplicate_id="rename"`` (then repeats get the same suffixes and are counted).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import xxhash

from datadiet.pipeline.atomic import (  # noqa: F401 - the writer, re-exported here
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    follow_umask,
    owned_temp_dir,
    sweep_leftovers,
)
from datadiet.pipeline.errors import (  # noqa: F401 - re-exported: io is where users look
    DataError,
    NoSpaceError,
    OutputError,
    SpecError,
    UserError,
    is_no_space,
)
from datadiet.pipeline.models.loading import cached_hub_repos, downloads_allowed
from datadiet.pipeline.records import (
    RecordFormat,
    detect_format,
    parse_fields,
    problem_with,
    render_text,
    sft_format,
    with_text,
)

if TYPE_CHECKING:
    from datasets import Dataset

OnError = Literal["raise", "skip"]
OnDuplicateId = Literal["error", "rename"]
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = JSONL_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES
# A name ending in one of these is a local path, never a hub id (a typo must say "no such file").
LOCAL_SUFFIXES = (*DATA_SUFFIXES, ".gz", ".md", ".csv", ".tsv", ".arrow", ".yaml", ".yml",
                  ".zst", ".bz2", ".xz", ".zip", ".tar", ".gguf", ".safetensors", ".bin", ".pt")
# A curated output folder: data shards at the top, the dataset card (README.md), and datadiet's
# own files in a hidden folder. Every reader's folder discovery skips names starting with ``.``
# (Arrow, Hugging Face, Spark), and the removed rows are Arrow IPC, not Parquet, so not even a
# recursive ``**/*.parquet`` glob (DuckDB, Polars) takes them for data.
META_DIR = ".datadiet"
MANIFEST_FILE = f"{META_DIR}/manifest.json"
REMOVED_FILE = f"{META_DIR}/removed.arrow"
CARD_FILE = "README.md"
# Outputs written before the hidden folder kept these at the top; ``why`` still reads them.
LEGACY_MANIFEST_FILE = "manifest.json"
WRITE_BATCH_ROWS = 10_000
BLOCK_BYTES = 4 << 20
MAX_SKIPPED_EXAMPLES = 1000
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class SkippedRow:
    """One row ``on_error="skip"`` left out, and why: ``file:line`` (or ``file row N``)."""

    file: str
    line: int
    reason: str
    unit: str = "line"

    @property
    def where(self) -> str:
        return _where(self.file, self.line, self.unit)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _where(label: str, n: int, unit: str = "line") -> str:
    return f"{label}:{n}" if unit == "line" else f"{label} row {n}"


# -- Arrow arrays from NumPy and back, without pandas ---------------------------------------
# pyarrow's generic conversions (``pa.array``, ``to_numpy`` of booleans) pass through its
# pandas shim, which imports pandas on first use: 0.14 s and 30 MiB, more than a file-to-file
# curate of 50,000 documents spends on its whole reduce. The few conversions the streamed
# curate needs are built from buffers here instead.


def arrow_ints(values: np.ndarray) -> pa.Array:
    """``values`` (any integer dtype) as an Arrow int64 array (zero-copy when already int64)."""
    data = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def arrow_floats(values: np.ndarray) -> pa.Array:
    """``values`` as an Arrow float64 array; NaN stays NaN (a value, not a null)."""
    data = np.ascontiguousarray(values, np.float64)
    return pa.Array.from_buffers(pa.float64(), len(data), [None, pa.py_buffer(data)])


def arrow_bools(mask: np.ndarray) -> pa.Array:
    """A NumPy bool mask as an Arrow boolean array (for ``filter``)."""
    mask = np.asarray(mask, bool)
    bits = np.packbits(mask, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def arrow_strings(values: Sequence[str]) -> pa.Array:
    """Python strings (valid UTF-8, no None) as an Arrow string array."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), len(encoded), [
            None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))])
    return pa.Array.from_buffers(pa.large_string(), len(encoded), [
        None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]).cast(pa.string())


def numpy_ints(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow integer array without nulls as NumPy (a view of its buffer when it can)."""
    if isinstance(array, pa.ChunkedArray):
        parts = [numpy_ints(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if array.null_count:
        raise ValueError("numpy_ints: the array has nulls")
    dtype = _NUMPY_INT[array.type.id]
    return np.frombuffer(array.buffers()[1], dtype)[array.offset : array.offset + len(array)]


_NUMPY_INT = {pa.int8().id: np.int8, pa.int16().id: np.int16, pa.int32().id: np.int32,
              pa.int64().id: np.int64, pa.uint8().id: np.uint8, pa.uint16().id: np.uint16,
              pa.uint32().id: np.uint32, pa.uint64().id: np.uint64}


def null_mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which entries of ``array`` are null, as a NumPy bool array.

    Read from the validity bitmap directly: pyarrow's own conversions of a boolean array go
    through its pandas shim, which imports pandas (0.14 s and 30 MiB) on first use, a cost a
    file-to-file run should not pay for a column without nulls.
    """
    if isinstance(array, pa.ChunkedArray):
        parts = [null_mask(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, bool)
    n = len(array)
    validity = array.buffers()[0] if array.null_count else None
    if validity is None:
        return np.zeros(n, bool) if array.null_count == 0 else np.ones(n, bool)
    bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
    return ~bits[array.offset : array.offset + n].astype(bool)


def is_dataset(obj: object) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset``, without importing ``datasets``: nothing can be
    one unless the caller imported it. Why: that import costs 0.7 CPU-seconds and 75 MiB, more
    than deduplicating 50,000 documents, and a command reading files never needs it."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(obj, module.Dataset)


def as_dataset(table: pa.Table, fingerprint: str | None = None) -> Dataset:
    """``table`` as an in-memory ``datasets.Dataset`` (``datasets`` is imported here, when a
    caller first asks for one). In memory, so ``datasets`` never writes cache files beside a
    mapped scratch file, which the reader may then delete at once."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(table), fingerprint=fingerprint)


@dataclass(kw_only=True)
class ReadReport:
    """What reading a corpus found out besides its rows: where it came from, its fingerprint,
    what was skipped or renamed, and how its records were read (the manifest's input)."""

    source: str
    fingerprint: str
    skipped: list[SkippedRow] = field(default_factory=list)
    skipped_count: int = 0
    renamed_ids: int = 0
    record_format: RecordFormat | None = None

    @property
    def rows(self) -> int:
        """How many rows were read (each kind of corpus counts its own)."""
        raise NotImplementedError

    def skipped_summary(self, limit: int = 20) -> dict[str, Any]:
        return {
            "count": self.skipped_count,
            "examples": [str(s) for s in self.skipped[:limit]],
        }


@dataclass(kw_only=True)
class LoadedCorpus(ReadReport):
    """A corpus with ``id`` and text columns, plus what was skipped or renamed.

    Read from files it is an Arrow ``table``, and :attr:`dataset` wraps it as a
    ``datasets.Dataset`` only when asked (steps that need one); given a ``Dataset``, both views
    are that dataset's.
    """

    table: pa.Table | None = None
    given_dataset: Dataset | None = field(default=None, repr=False)

    @property
    def dataset(self) -> Dataset:
        """The rows as a ``datasets.Dataset`` (wrapped once, zero-copy, on first use)."""
        if self.given_dataset is None:
            assert self.table is not None
            self.given_dataset = as_dataset(self.table, self.fingerprint)
        return self.given_dataset

    @property
    def rows(self) -> int:
        return len(self.table) if self.table is not None else len(self.dataset)


def content_id(text: str) -> str:
    """A stable id for a record without one: 16 hex digits of xxh3-64 of the text."""
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogatepass"))


def looks_local(source: str | os.PathLike, suffixes: Sequence[str] = LOCAL_SUFFIXES, *,
                bare_names: bool = True) -> bool:
    """Whether ``source`` can only mean a local path (so a missing one is "no such file").

    Local: starts with ``.``, ``/`` or ``~``; ends in a file extension from ``suffixes``; names
    a folder that exists, as in ``data/nope.jsonl``; or (with ``bare_names``, right for data
    sets, whose hub ids are ``owner/name``) has no ``/`` at all. Only what is left may be sent
    to the hub.
    """
    text = os.fspath(source)
    if text.startswith((".", "/", "~")) or (bare_names and "/" not in text.replace(os.sep, "/")):
        return True
    if text.lower().endswith(tuple(suffixes)):
        return True
    parent = Path(text).expanduser().parent
    return str(parent) not in ("", ".") and parent.exists()


def no_such_path(source: str | os.PathLike, what: str = "file or folder") -> DataError:
    return DataError(f"{os.fspath(source)}: no such {what}")


# -- ids ------------------------------------------------------------------------------------


def unique_ids(
    ids: pa.Array | pa.ChunkedArray,
    from_data: np.ndarray,
    locate: Callable[[int], str],
    on_duplicate_id: OnDuplicateId = "error",
) -> tuple[pa.Array | None, int]:
    """THE id rule: content-hash repeats get ``-2``, ``-3``; a repeated source id is an error.

    ``from_data[i]`` says whether row ``i``'s id came from the data (else it is a content
    hash). Returns the new id column (``None`` when every id is already unique) and how many
    source ids were renamed. Runs in Arrow's hash tables, so the common case (all unique)
    costs one pass in C++ and a few bytes per row.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    n = len(ids)
    encoded = pc.dictionary_encode(ids)
    if len(encoded.dictionary) == n:
        return None, 0
    codes = numpy_ints(encoded.indices)
    counts = np.bincount(codes)
    repeated = np.flatnonzero(counts[codes] > 1)
    order = repeated[np.argsort(codes[repeated], kind="stable")]
    sorted_codes = codes[order]
    group_start = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    first_pos = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    rank = np.arange(len(order)) - first_pos
    later = rank > 0
    rows, ranks, firsts = order[later], rank[later], order[first_pos[later]]
    renamed = 0
    source_repeats = from_data[rows]
    if source_repeats.any():
        if on_duplicate_id != "rename":
            i = int(np.flatnonzero(source_repeats)[np.argmin(rows[source_repeats])])
            row, first = int(rows[i]), int(firsts[i])
            raise DataError(
                f"{locate(row)}: repeated id {ids[row].as_py()!r}, first at {locate(first)} "
                "(ids must be unique; pass --on-duplicate-id rename to keep both, suffixed -2, -3)"
            )
        renamed = int(source_repeats.sum())
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    old = ids.take(pa.array(rows)).to_pylist()
    # replace_with_mask fills the masked slots in row order: sort the suffixes the same way.
    by_row = np.argsort(rows)
    suffixed = [f"{old[j]}-{int(ranks[j]) + 1}" for j in by_row]
    new = pc.replace_with_mask(ids, pa.array(mask), pa.array(suffixed, pa.string()))
    if len(pc.dictionary_encode(new).dictionary) != n:  # a suffix met an id of the data
        unique_ids(new, np.ones(n, dtype=bool), locate, "error")  # raises, naming both rows
    return new, renamed


# -- the row sink ---------------------------------------------------------------------------


class _Rows:
    """Validated rows of one corpus as Arrow batches, and where each row came from.

    Rows arrive either as whole Arrow columns (the fast readers) or one by one (the
    validator); both end in the same batches, the same content ids and the same id check.
    Locations are kept as a source number and a line (or row) number per row, 8 bytes a row,
    so a repeated id can name both of its lines.
    """

    def __init__(self, text_field: str, id_field: str, keep_fields: list[str],
                 path: Path | None = None,
                 on_batch: Callable[[pa.RecordBatch], None] | None = None) -> None:
        self.text_field, self.id_field = text_field, id_field
        self.on_batch = on_batch  # streaming: each batch is handed over as it is read
        self.id_chunks: list[pa.Array] = []  # streaming: the ids, for the id rule at the end
        self.keep_fields = list(keep_fields)
        self.path = path
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.batches: list[pa.RecordBatch] = []
        self.sources: list[tuple[str, str]] = []  # (label, "line" or "row")
        self.where: list[tuple[int, np.ndarray]] = []  # (source, line per row) per batch
        self.from_data: list[np.ndarray] = []
        self.keep_present = dict.fromkeys(keep_fields, 0)
        self.rows = 0
        self._pending: list[tuple[int, int, str | None, str, dict[str, Any]]] = []

    @property
    def names(self) -> list[str]:
        return [self.id_field, self.text_field, *self.keep_fields]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c, pa.string()) for c in self.names])

    def carry(self, columns: Iterable[str]) -> None:
        """Also keep ``columns`` (a fine-tuning format's fields); only before the first row."""
        if self.rows or self._pending:
            raise RuntimeError("columns to carry must be known before the first row")
        for column in columns:
            if column not in self.names:
                self.keep_fields.append(column)

    def source(self, label: str, unit: str = "line") -> int:
        self.flush()
        self.sources.append((label, unit))
        return len(self.sources) - 1

    def locate(self, row: int) -> str:
        starts = np.cumsum([0] + [len(lines) for _, lines in self.where])
        chunk = int(np.searchsorted(starts, row, side="right")) - 1
        src, lines = self.where[chunk]
        label, unit = self.sources[src]
        return _where(label, int(lines[row - starts[chunk]]), unit)

    def add_row(self, src: int, line: int, record_id: str | None, text: str,
                extra: Mapping[str, Any]) -> None:
        self._pending.append((src, line, record_id, text, extra))
        if len(self._pending) >= WRITE_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        src = pending[0][0]
        extras = {}
        for name in self.keep_fields:
            values = [r[4].get(name) for r in pending]
            extras[name] = pa.array(
                [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                pa.string())
        self.add_columns(src, np.array([r[1] for r in pending], dtype=np.uint32),
                         pa.array([r[2] for r in pending], pa.string()),
                         pa.array([r[3] for r in pending], pa.string()), extras)

    def add_columns(self, src: int, lines: np.ndarray, ids: pa.Array | None, texts: pa.Array,
                    extras: Mapping[str, pa.Array]) -> None:
        """Append rows given as columns; ids that are null become content hashes."""
        n = len(texts)
        if n == 0:
            return
        if ids is None:
            ids = pa.nulls(n, pa.string())
        missing = null_mask(ids)
        if missing.all():
            ids = pa.array([content_id(t) for t in texts.to_pylist()], pa.string())
        elif missing.any():
            idx = np.flatnonzero(missing)
            hashes = [content_id(t) for t in texts.take(pa.array(idx)).to_pylist()]
            ids = pc.replace_with_mask(ids, pa.array(missing), pa.array(hashes, pa.string()))
        columns = [ids, texts]
        for name in self.keep_fields:
            column = extras.get(name)
            if column is None:
                column = pa.nulls(n, pa.string())
            if name in self.keep_present:
                self.keep_present[name] += n - column.null_count
            columns.append(column)
        batch = pa.record_batch(columns, schema=self.schema)
        if self.on_batch is not None:
            self.id_chunks.append(ids)
            self.on_batch(batch)
        if self.path is not None:
            if self.writer is None:
                self.writer = pa.ipc.new_stream(str(self.path), self.schema)
            self.writer.write_batch(batch)
        else:
            self.batches.append(batch)
        self.where.append((src, lines))
        self.from_data.append(~missing)
        self.rows += n

    def finish(self, on_duplicate_id: OnDuplicateId) -> tuple[pa.Table, int]:
        """The corpus as one Arrow table (ids made unique by the id rule) and the renamed count."""
        self.flush()
        if self.path is not None and self.writer is None:  # no rows at all
            self.writer = pa.ipc.new_stream(str(self.path), self.schema)
        if self.writer is not None:
            self.writer.close()
            with pa.memory_map(str(self.path)) as source:
                table = pa.ipc.open_stream(source).read_all()
        else:
            table = pa.Table.from_batches(self.batches, schema=self.schema)
        new_ids, renamed = self._final_ids(table.column(self.id_field), on_duplicate_id)
        if new_ids is not None:
            table = table.set_column(0, self.id_field, new_ids)
        return table, renamed

    def _final_ids(self, ids: pa.ChunkedArray | pa.Array, on_duplicate_id: OnDuplicateId
                   ) -> tuple[pa.Array | None, int]:
        """The checks that need every row: kept fields present somewhere, and the id rule."""
        for name, present in self.keep_present.items():
            if self.rows and not present:
                raise DataError(f"--keep-fields: no record has the field {name!r}")
        from_data = np.concatenate(self.from_data) if self.from_data else np.zeros(0, bool)
        return unique_ids(ids, from_data, self.locate, on_duplicate_id)

    def finish_stream(self, on_duplicate_id: OnDuplicateId) -> tuple[pa.Array, int]:
        """Close the stream file of a streamed read; the final ids (by the id rule) and how
        many were renamed. The rows stay in the file, read back by :class:`StreamedCorpus`."""
        self.flush()
        if self.writer is None:
            assert self.path is not None
            self.writer = pa.ipc.new_stream(str(self.path), self.schema)
        self.writer.close()
        ids = pa.chunked_array(self.id_chunks, pa.string())
        new_ids, renamed = self._final_ids(ids, on_duplicate_id)
        if new_ids is not None:
            return new_ids, renamed
        return ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string()), 0

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


# -- reading files --------------------------------------------------------------------------


class _Reader:
    """Reads files into a :class:`_Rows`: fast where the input is well formed, else row by row.

    ``bad`` is the one place a bad row goes: it raises :class:`DataError` with ``file:line``,
    or with ``on_error="skip"`` records and counts it.
    """

    def __init__(self, rows: _Rows, on_error: OnError, fmt: RecordFormat | None = None) -> None:
        self.rows = rows
        self.on_error = on_error
        self.fmt: RecordFormat | None = None  # None: decided by the first record
        self.skipped: list[SkippedRow] = []
        self.skipped_count = 0
        self.hasher = xxhash.xxh3_128()
        if fmt is not None:
            self._use(fmt)

    def _use(self, fmt: RecordFormat) -> None:
        self.fmt = fmt
        if not fmt.is_text:
            self.rows.carry(fmt.data_columns)

    def _resolve(self, where: str, keys: Iterable[str]) -> RecordFormat:
        """The record format: the one given, or the one the first record's fields fit."""
        if self.fmt is None:
            try:
                self._use(detect_format(keys, self.rows.text_field))
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None
        return self.fmt  # type: ignore[return-value]

    def _fast_schemas(self) -> list[pa.Schema]:
        text, rid = self.rows.text_field, self.rows.id_field
        keep = [(k, pa.string()) for k in self.rows.keep_fields]
        return [pa.schema([(rid, pa.string()), (text, pa.string()), *keep]),
                pa.schema([(rid, pa.int64()), (text, pa.string()), *keep])]

    def bad(self, file: str | Path, line: int, reason: str, unit: str = "line") -> None:
        row = SkippedRow(str(file), line, reason, unit)
        if self.on_error == "raise":
            raise DataError(f"{row} (use --on-error skip to skip such rows)")
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_EXAMPLES:
            self.skipped.append(row)

    def take(self, src: int, line: int, record: Any) -> None:
        """Check one parsed record and add it, or report it as bad."""
        rows = self.rows
        label, unit = rows.sources[src]

        def bad(reason: str) -> None:
            self.bad(label, line, reason, unit)

        if not isinstance(record, dict):
            bad(f"expected a JSON object, got {_json_type(record)}")
            return
        fmt = self._resolve(_where(label, line, unit), record)
        problem = problem_with(record, fmt)
        if problem:
            bad(problem)
            return
        if not fmt.is_text and rows.text_field in record:
            bad(f"field {rows.text_field!r} would be replaced by the rendered {fmt.kind} "
                "record; pass another --text-field")
            return
        rid = record.get(rows.id_field)
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
            bad(f"field {rows.id_field!r} is {_json_type(rid)}, not a string or integer")
            return
        for name in (*fmt.data_columns, rows.id_field, *rows.keep_fields):
            value = record.get(name)
            if isinstance(value, str) and not _is_utf8(value):
                bad(f"field {name!r} holds a lone surrogate (an invalid \\u escape)")
                return
        text = render_text(record, fmt)
        if not _is_utf8(text):  # a surrogate inside chat messages
            bad(f"the {fmt.kind} record holds a lone surrogate (an invalid \\u escape)")
            return
        rows.add_row(src, line, None if rid is None else str(rid), text, record)

    def read_file(self, path: Path) -> None:
        self.hasher.update(path.name.encode())
        name = path.name
        if name.endswith(PARQUET_SUFFIXES):
            self.read_parquet(path)
        elif name.endswith(JSONL_SUFFIXES):
            self.read_jsonl(path)
        else:  # .txt, or a single file named explicitly, whatever its extension
            self.read_text(path)

    def _chunks(self, path: Path) -> Iterator[bytes]:
        """The file's bytes (un-gzipped where named ``.gz``), hashed as they are read."""
        gz = path.name.endswith(".gz")
        inflate = zlib.decompressobj(wbits=31) if gz else None
        started = False
        with open(path, "rb") as fh:
            while raw := fh.read(BLOCK_BYTES):
                self.hasher.update(raw)
                if inflate is None:
                    yield raw
                    continue
                try:
                    out = inflate.decompress(raw)
                    while inflate.eof and inflate.unused_data:  # a multi-member gzip file
                        rest = inflate.unused_data
                        inflate = zlib.decompressobj(wbits=31)
                        out += inflate.decompress(rest)
                except zlib.error as exc:
                    if not started:
                        raise _GzipProblem("not gzip data (the name ends in .gz)") from exc
                    raise _GzipProblem(f"corrupt gzip data ({exc})") from exc
                started = True
                yield out
        if inflate is not None and not inflate.eof:
            raise _GzipProblem("the gzip data ends early: the file is truncated")

    def _lines_of(self, path: Path) -> Iterator[tuple[int, bytes]]:
        """Blocks of whole lines and the number of their first line; the BOM stripped."""
        carry, line, first = b"", 1, True
        try:
            for chunk in self._chunks(path):
                if first and chunk:
                    chunk = chunk.removeprefix(UTF8_BOM)
                    first = False
                buf = carry + chunk
                cut = buf.rfind(b"\n") + 1
                if not cut:
                    carry = buf
                    continue
                block, carry = buf[:cut], buf[cut:]
                yield line, block
                line += block.count(b"\n")
        except _GzipProblem as exc:
            where = line + carry.count(b"\n")
            raise DataError(f"{path}:{where}: {exc}") from None
        if carry:
            yield line, carry

    def read_jsonl(self, path: Path) -> None:
        src = self.rows.source(str(path))
        checked_start = False
        for first_line, block in self._lines_of(path):
            if not checked_start:
                stripped = block.lstrip()
                if not stripped:
                    continue
                if stripped.startswith(b"["):
                    line = first_line + block[: len(block) - len(stripped)].count(b"\n")
                    raise DataError(f"{path}:{line}: a JSON array, not JSON Lines (datadiet reads "
                                    "one JSON object per line; convert with `jq -c '.[]'`)")
                checked_start = True
                if self.fmt is None:
                    self._detect_from_first_record(path, first_line, block)
            if not (self.fmt is not None and self.fmt.is_text
                    and self._fast_jsonl_block(src, first_line, block)):
                self._slow_jsonl_block(path, src, first_line, block)

    def _detect_from_first_record(self, path: Path, first_line: int, block: bytes) -> None:
        """Settle the record format on the first line that is a JSON object (else leave it)."""
        start, line = 0, first_line
        while start < len(block):
            end = block.find(b"\n", start)
            end = len(block) if end < 0 else end
            raw = block[start:end]
            if raw.strip():
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):
                    return
                if isinstance(record, dict):
                    self._resolve(f"{path}:{line}", record)
                return
            start, line = end + 1, line + 1

    def _fast_jsonl_block(self, src: int, first_line: int, block: bytes) -> bool:
        """Parse a block with pyarrow; False (nothing added) if anything needs the validator."""
        table = None
        for schema in self._fast_schemas():
            try:
                table = pa_json.read_json(
                    pa.BufferReader(block),
                    parse_options=pa_json.ParseOptions(explicit_schema=schema,
                                                       unexpected_field_behavior="ignore"),
                )
                break
            except (pa.ArrowInvalid, UnicodeDecodeError, pa.ArrowNotImplementedError):
                continue
        if table is None:
            return False
        try:
            table.validate(full=True)  # pyarrow's JSON reader does not check UTF-8 in values
        except pa.ArrowInvalid:
            return False
        rows = self.rows
        texts = table.column(rows.text_field)
        if texts.null_count:
            return False  # a missing or null text: the validator names the line
        lines = _object_lines(block, first_line, table.num_rows)
        if lines is None:
            return False
        done = 0
        for batch in table.to_batches():  # pyarrow's own chunks, zero-copy (no combining)
            n = batch.num_rows
            if n == 0:
                continue
            ids = batch.column(rows.id_field)
            if ids.type != pa.string():
                ids = ids.cast(pa.string())
            extras = {k: batch.column(k) for k in rows.keep_fields}
            rows.add_columns(src, lines[done : done + n], ids, batch.column(rows.text_field),
                             extras)
            done += n
        return True

    def _slow_jsonl_block(self, path: Path, src: int, first_line: int, block: bytes) -> None:
        for offset, raw in enumerate(block.split(b"\n")):
            if not raw.strip():
                continue
            line = first_line + offset
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad(path, line, f"invalid UTF-8 at byte {exc.start}")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                self.bad(path, line, f"malformed JSON: {exc.msg} at column {exc.colno}")
                continue
            except RecursionError:
                self.bad(path, line, "JSON nested too deeply to read")
                continue
            self.take(src, line, record)

    def read_text(self, path: Path) -> None:
        self.read_text_blocks(str(path), self._lines_of(path))

    def read_text_blocks(self, label: str, blocks: Iterable[tuple[int, bytes]]) -> None:
        """THE ``.txt`` rule: one document per blank-line-separated block of lines; the block's
        first line is its line. Files, stdin and prompt files all read text through here."""
        src = self.rows.source(label)
        block: list[str] = []
        start, bad_block = 0, False

        def emit() -> None:
            text = "\n".join(block).strip()
            if text and not bad_block:
                self.rows.add_row(src, start, None, text, {})

        for first_line, chunk in blocks:
            for offset, raw in enumerate(chunk.splitlines()):
                line = first_line + offset
                try:
                    decoded = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.bad(label, line, f"invalid UTF-8 at byte {exc.start}")
                    decoded, bad_block = "\x00", True
                if decoded.strip():
                    if not block:
                        start = line
                    block.append(decoded)
                elif block:
                    emit()
                    block, bad_block = [], False
        if block:
            emit()

    def read_parquet(self, path: Path) -> None:
        rows = self.rows
        data = path.read_bytes()
        self.hasher.update(data)
        try:
            pf = pq.ParquetFile(pa.BufferReader(data))
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        schema = pf.schema_arrow
        if self.fmt is None and rows.text_field not in schema.names:
            try:
                self._use(detect_format(schema.names, rows.text_field, noun="columns"))
            except ValueError as exc:
                raise DataError(f"{path}: {exc}") from None
        if self.fmt is not None and not self.fmt.is_text:
            self._parquet_records(path, pf, schema.names)
            return
        if self.fmt is None:
            self._use(RecordFormat.default("text", rows.text_field))
        if rows.text_field not in schema.names:
            raise DataError(f"{path}: missing text field {rows.text_field!r} "
                            f"(columns: {', '.join(schema.names)})")
        text_type = schema.field(rows.text_field).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise DataError(f"{path}: column {rows.text_field!r} is {text_type}, not a string")
        src = rows.source(str(path), unit="row")
        wanted = [c for c in dict.fromkeys([rows.id_field, rows.text_field, *rows.keep_fields])
                  if c in schema.names]
        done = 0
        try:
            batches = pf.iter_batches(batch_size=WRITE_BATCH_ROWS, columns=wanted)
            for batch in batches:
                self._parquet_batch(path, src, done, batch)
                done += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path} row {done + 1}: unreadable Parquet data ({exc})") from None

    def _parquet_records(self, path: Path, pf: pq.ParquetFile, names: list[str]) -> None:
        """Fine-tuning records in Parquet: checked and rendered row by row, like JSONL."""
        fmt = self.fmt
        assert fmt is not None
        src = self.rows.source(str(path), unit="row")
        wanted = [c for c in dict.fromkeys([*fmt.data_columns, self.rows.id_field,
                                            *self.rows.keep_fields]) if c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=WRITE_BATCH_ROWS, columns=wanted):
            for record in batch.to_pylist():
                row += 1
                self.take(src, row, record)

    def _parquet_batch(self, path: Path, src: int, done: int, batch: pa.RecordBatch) -> None:
        rows = self.rows
        lines = np.arange(done + 1, done + 1 + batch.num_rows, dtype=np.uint32)
        texts = batch.column(rows.text_field).cast(pa.string())
        if texts.null_count:
            missing = null_mask(texts)
            for i in np.flatnonzero(missing):
                self.bad(path, done + 1 + int(i), f"field {rows.text_field!r} is null", "row")
            batch, lines = batch.filter(arrow_bools(~missing)), lines[~missing]
            texts = batch.column(rows.text_field).cast(pa.string())
        ids = None
        if rows.id_field in batch.schema.names:
            column = batch.column(rows.id_field)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                    or pa.types.is_integer(column.type)):
                raise DataError(f"{path}: column {rows.id_field!r} is {column.type}, "
                                "not a string or integer")
            ids = column.cast(pa.string())
        extras = {}
        for name in rows.keep_fields:
            if name not in batch.schema.names:
                continue
            column = batch.column(name)
            if pa.types.is_nested(column.type):
                extras[name] = pa.array([None if v is None else json.dumps(v, default=str)
                                         for v in column.to_pylist()], pa.string())
            else:
                extras[name] = column.cast(pa.string())
        rows.add_columns(src, lines, ids, texts, extras)


def text_documents(data: bytes, label: str = "stdin") -> list[str]:
    """Documents of text given as bytes (stdin, a prompt file), by the one ``.txt`` rule.

    Bad UTF-8 is a :class:`DataError` naming ``label:line``; a leading BOM is dropped.
    """
    rows = _Rows("text", "id", [])
    _Reader(rows, "raise").read_text_blocks(label, [(1, data.removeprefix(UTF8_BOM))])
    rows.flush()
    return [t for batch in rows.batches for t in batch.column(1).to_pylist()]


def read_stdin_bytes() -> bytes:
    """All of stdin as bytes (a text stream without a byte buffer, as in tests, is encoded)."""
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8", "surrogatepass")


def decode_utf8(data: bytes, label: str) -> str:
    """Bytes as text, or a :class:`DataError` naming where the first bad byte is."""
    try:
        return data.removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{label}:{line}: not UTF-8 text (byte {exc.start})") from None


class _GzipProblem(Exception):
    """Raised inside the chunk reader; turned into a DataError that knows the line."""


def _json_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _object_lines(block: bytes, first_line: int, n_rows: int) -> np.ndarray | None:
    """The line number of each row of a block pyarrow parsed, or None if they do not line up.

    pyarrow accepts a few things the contract does not (two objects on one line, an indented
    or whitespace-only line); demanding that every non-empty line starts with ``{`` and that
    there is one row per such line sends those blocks to the validator instead.
    """
    data = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    lengths = ends - starts
    has_cr = (lengths > 0) & (data[np.maximum(ends - 1, 0)] == 13)
    lengths = lengths - has_cr
    filled = lengths > 0
    if int(filled.sum()) != n_rows or (data[starts[filled]] != ord("{")).any():
        return None
    return (first_line + np.flatnonzero(filled)).astype(np.uint32)


def find_manifest(folder: str | os.PathLike) -> Path | None:
    """The manifest of a folder ``datadiet curate`` wrote (``.datadiet/manifest.json``, or
    ``manifest.json`` at the top in the older layout), or None if it has none."""
    for name in (MANIFEST_FILE, LEGACY_MANIFEST_FILE):
        if (path := Path(folder) / name).is_file():
            return path
    return None


def write_removed(table: pa.Table, path: Path) -> None:
    """The removed rows as a compressed Arrow IPC file (see ``REMOVED_FILE`` for why not
    Parquet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_file(path, table.schema, options=options) as writer:
        writer.write_table(table)


def read_removed(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The removed rows of a curated output (``columns`` of them, or all), in either layout
    (Arrow IPC, or the older ``removed/removed.parquet``)."""
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=None if columns is None else list(columns))
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return table if columns is None else table.select(list(columns))


def _curated_shards(folder: Path) -> list[Path] | None:
    """The data shards of a folder ``datadiet curate`` wrote, or None if it is not one.

    Such a folder has a manifest (a JSON object, see :func:`find_manifest`); its shards are
    the ones the manifest lists, or, for a manifest without that list, the ``*.parquet`` files
    beside it. The manifest, the card and the removed rows are never read as data.
    """
    manifest = find_manifest(folder)
    if manifest is None:
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    shards = (data.get("output") or {}).get("shards") if isinstance(data.get("output"), dict) \
        else None
    if isinstance(shards, list) and all(isinstance(s, str) for s in shards):
        paths = [folder / s for s in shards]
        for p in paths:
            if not p.is_file():
                raise DataError(f"{manifest}: lists the shard {p.name}, which is missing")
        return paths
    paths = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not paths:
        raise DataError(f"{folder}: has a {manifest.name} but no data shards (*.parquet)")
    return paths


def list_data_files(root: Path) -> list[Path]:
    """The data files of a folder, in a stable order.

    A curated output (a folder with a datadiet manifest) contributes only its data shards, not
    its manifest or removals. Elsewhere every ``.jsonl/.json/.ndjson(.gz)``, ``.parquet`` and
    ``.txt(.gz)`` file is read, in any subfolder (``removed/`` included); hidden files and
    folders (``.OUT.tmp-*`` from an interrupted write) and other files (``.md``) are not.
    """
    shards = _curated_shards(root)
    if shards is not None:
        return shards
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here != root and (sub := _curated_shards(here)) is not None:
            files.extend(sub)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(here / f for f in sorted(filenames)
                     if not f.startswith(".") and f.endswith(DATA_SUFFIXES))
    if not files:
        raise DataError(f"{root}: no .jsonl, .json(.gz), .parquet or .txt files in this folder")
    return files


@contextmanager
def scratch_dir(prefix: str, parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A private temp folder that is removed on success, error, Ctrl-C and (with
    :func:`install_signal_cleanup`) SIGTERM: nothing of a run stays in ``$TMPDIR``. Its name
    carries the run's owner, so a later run sweeps the folder a SIGKILLed one left."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = owned_temp_dir(prefix, parent)
    try:
        yield path
    except OSError as exc:
        if is_no_space(exc) and not isinstance(exc, NoSpaceError):
            raise NoSpaceError(f"{exc.filename or path}: no space left on the device of the "
                               f"run's scratch folder {path.parent} (TMPDIR); set TMPDIR to a "
                               "folder on a disk with room") from exc
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so every ``finally`` runs (exit status 143)."""


def install_signal_cleanup() -> None:
    """Turn SIGTERM (what SLURM, Kubernetes and ``kill`` send) into :class:`Terminated` (143).

    Python's default for SIGTERM kills the process without unwinding, so no ``finally`` runs
    and temp folders and half-written ``.OUT.tmp-*`` outputs stay behind. Raised as an
    exception instead, every :func:`atomic_path` and :func:`scratch_dir` cleans up on the way
    out. Only the main thread may set handlers; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def _terminate(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)


def fingerprint_files(files: Iterable[Path]) -> str:
    """xxh3-128 over every input byte (and names), as the reader computes it while reading."""
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
        return fingerprint_files(list_data_files(path) if path.is_dir() else [path])
    if looks_local(source):
        raise no_such_path(source)
    return f"hf://{os.fspath(source)}"


def load_corpus(
    source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]],
    *,
    text_field: str = "text",
    id_field: str = "id",
    keep_fields: Iterable[str] = (),
    on_error: OnError = "raise",
    on_duplicate_id: OnDuplicateId = "error",
    split: str = "train",
    work_dir: str | os.PathLike | None = None,
    fields: RecordFormat | str | dict | None = "auto",
) -> LoadedCorpus:
    """Load JSONL(.gz) / Parquet / text files or folders, a saved dataset, a hub id, a
    ``Dataset`` or a list of dicts, with the same checks and the same id rule for each.

    The result always has an ``id_field`` column (from the data, or a content hash) and the
    text column, plus any ``keep_fields`` carried as strings (``Dataset`` and list inputs keep
    all their columns). ``fields`` says how to read records (see
    :mod:`datadiet.pipeline.records`): ``"auto"`` takes the text field if the first record has
    one, else the fine-tuning format its fields fit; a format name or a mapping fixes it. For
    fine-tuning records the text column holds the rendered row (what the pre-training steps
    read), and the format's own columns are carried along. Options are keyword-only so formats
    can add their own.
    """
    _check_read_options(on_error, on_duplicate_id)
    fmt = _parse_fields(fields, text_field)
    keep = [f for f in dict.fromkeys(keep_fields) if f not in (text_field, id_field)]
    if is_dataset(source) or not isinstance(source, str | os.PathLike):
        return corpus_from_records(source, text_field=text_field, id_field=id_field,
                                   on_duplicate_id=on_duplicate_id, fields=fmt)
    path = Path(source).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (splits: {', '.join(ds.keys())})")
            ds = ds[split]
        return _from_dataset(ds, str(path), text_field, id_field, keep, on_duplicate_id, fmt)
    if path.exists():
        return _read_files(path, text_field, id_field, keep, on_error, on_duplicate_id, work_dir,
                           fmt)
    if looks_local(source):
        raise no_such_path(source)
    return _load_hub(os.fspath(source), split, text_field, id_field, keep, on_duplicate_id, fmt)


def _read_all(path: Path, rows: _Rows, reader: _Reader, finish: Callable[[], Any]) -> Any:
    """Every data file under ``path`` through ``reader`` into ``rows`` (at least one row), then
    ``finish()``'s result; on any failure the rows' scratch file is closed first."""
    try:
        _read_files_into(path, rows, reader)
        return finish()
    except BaseException:
        rows.abort()
        raise


def _read_files_into(path: Path, rows: _Rows, reader: _Reader) -> None:
    files = list_data_files(path) if path.is_dir() else [path]
    for f in files:
        if f.stat().st_size == 0 and reader.on_error == "raise":
            raise DataError(f"{f}: empty file (no records)")
    for f in files:
        reader.read_file(f)
    if rows.rows == 0:
        rows.flush()
    if rows.rows == 0:
        raise DataError(f"{path}: no records could be read"
                        + (f" ({reader.skipped_count} skipped)" if reader.skipped_count else ""))


def _read_files(path: Path, text_field: str, id_field: str, keep: list[str], on_error: OnError,
                on_duplicate_id: OnDuplicateId, work_dir: str | os.PathLike | None,
                fmt: RecordFormat | None) -> LoadedCorpus:
    with scratch_dir("datadiet-load-", work_dir) as work:
        rows = _Rows(text_field, id_field, keep, work / "corpus.arrow")
        reader = _Reader(rows, on_error, fmt)
        table, renamed = _read_all(path, rows, reader, lambda: rows.finish(on_duplicate_id))
    return LoadedCorpus(table=table, **_report(reader, path, renamed))


def reads_as_files(source: Any) -> bool:
    """Whether ``source`` names local data files or a folder of them (not a saved dataset):
    what :func:`stream_corpus` reads."""
    if not isinstance(source, str | os.PathLike):
        return False
    path = Path(source).expanduser()
    return path.exists() and not (path.is_dir() and _is_saved_dataset(path))


@dataclass(kw_only=True)
class StreamedCorpus(ReadReport):
    """A corpus read once, in batches handed to a consumer as they were read, and kept in a
    scratch Arrow stream file so that its rows can be read again batch by batch (to write the
    kept ones). Memory holds the ids and one batch, never the corpus."""

    path: Path
    ids: pa.Array  #: every row's final id (after the id rule), in input order
    schema: pa.Schema

    @property
    def rows(self) -> int:
        return len(self.ids)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows again, batch by batch as read, with their final ids."""
        start = 0
        with pa.OSFile(str(self.path)) as handle:
            for batch in pa.ipc.open_stream(handle):
                n = batch.num_rows
                if self.renamed_ids:
                    batch = batch.set_column(0, batch.schema.field(0), self.ids.slice(start, n))
                start += n
                yield batch


def stream_corpus(
    source: str | os.PathLike,
    on_batch: Callable[[pa.RecordBatch], None],
    work_dir: Path,
    *,
    text_field: str = "text",
    id_field: str = "id",
    keep_fields: Iterable[str] = (),
    on_error: OnError = "raise",
    on_duplicate_id: OnDuplicateId = "error",
    fields: RecordFormat | str | dict | None = "auto",
    on_start: Callable[[list[str], RecordFormat | None], None] | None = None,
) -> StreamedCorpus:
    """Read data files like :func:`load_corpus` — the same reader, checks, errors and id rule —
    but hand each validated batch (id, text, kept columns) to ``on_batch`` as it is read and
    keep the rows in ``work_dir/corpus.arrow`` instead of in memory. ``on_start(columns,
    record_format)`` is called once, just before the first batch is handed over (a curation
    plan checks and prepares its steps there, before any map runs).

    Why: a step that is a per-row map plus a global reduce (exact and MinHash dedup) needs
    each text once, while it is being read; the corpus itself is needed again only to write
    the rows kept. Memory is then one batch plus the map's few bytes per row, whatever the
    corpus size. Ids of a batch handed over may still change by the id rule (a repeated id
    renamed with ``on_duplicate_id="rename"``); the final ids are in the result.
    """
    _check_read_options(on_error, on_duplicate_id)
    fmt = _parse_fields(fields, text_field)
    keep = [f for f in dict.fromkeys(keep_fields) if f not in (text_field, id_field)]
    path = Path(source).expanduser()
    if not reads_as_files(path):
        raise no_such_path(source)
    rows = _Rows(text_field, id_field, keep, work_dir / "corpus.arrow", on_batch=on_batch)
    reader = _Reader(rows, on_error, fmt)
    if on_start is not None:

        def first(batch: pa.RecordBatch) -> None:
            rows.on_batch = on_batch
            on_start(batch.schema.names, reader.fmt)
            on_batch(batch)

        rows.on_batch = first
    ids, renamed = _read_all(path, rows, reader, lambda: rows.finish_stream(on_duplicate_id))
    assert rows.path is not None
    return StreamedCorpus(path=rows.path, ids=ids, schema=rows.schema,
                          **_report(reader, path, renamed))


def _report(reader: _Reader, path: Path, renamed: int) -> dict[str, Any]:
    """The :class:`ReadReport` fields of a read of ``path``."""
    return {"source": str(path), "fingerprint": reader.hasher.hexdigest(),
            "skipped": reader.skipped, "skipped_count": reader.skipped_count,
            "renamed_ids": renamed, "record_format": reader.fmt}


def _check_read_options(on_error: str, on_duplicate_id: str) -> None:
    if on_error not in ("raise", "skip"):
        raise SpecError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if on_duplicate_id not in ("error", "rename"):
        raise SpecError(f"on_duplicate_id must be 'error' or 'rename', not {on_duplicate_id!r}")


def _parse_fields(fields: RecordFormat | str | dict | None, text_field: str) -> RecordFormat | None:
    try:
        return fields if isinstance(fields, RecordFormat) else parse_fields(fields, text_field)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def corpus_from_records(
    records: Dataset | Sequence[Mapping[str, Any]],
    *,
    text_field: str = "text",
    id_field: str = "id",
    on_duplicate_id: OnDuplicateId = "error",
    source: str = "records",
    fields: RecordFormat | None = None,
) -> LoadedCorpus:
    """A ``Dataset`` or a list of dicts, checked like a file and given ids by the id rule.

    All columns are kept (the caller wants their own records back, filtered); rows are named
    ``records row N`` (1-based) in errors.
    """
    if is_dataset(records):
        return _from_dataset(records, "dataset", text_field, id_field, None, on_duplicate_id,
                             fields)
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Sequence):
        raise DataError(f"expected a datasets.Dataset or a list of dicts, got "
                        f"{type(records).__name__}")
    rows = _Rows(text_field, id_field, [])
    reader = _Reader(rows, "raise", fields)
    src = rows.source(source, unit="row")
    for i, record in enumerate(records, start=1):
        reader.take(src, i, record)
    if not records:
        raise DataError(f"{source}: no records (an empty list)")
    rows.flush()
    from datasets import Dataset

    try:
        ds = Dataset.from_list([dict(r) for r in records])
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        # OverflowError: an int beyond 64 bits (e.g. an id of 2**63) has no Arrow type
        raise DataError(f"{source}: the records do not form a table: {exc}") from None
    return _from_dataset(ds, source, text_field, id_field, None, on_duplicate_id, reader.fmt)


def _load_hub(name: str, split: str, text_field: str, id_field: str, keep: list[str],
              on_duplicate_id: OnDuplicateId, fmt: RecordFormat | None) -> LoadedCorpus:
    """A Hugging Face hub dataset id: its snapshot in the local Hugging Face cache, read by
    the one reader; one not cached is an error at once (no retries against the network),
    unless the user opted in to downloads (``DATADIET_ALLOW_DOWNLOADS=1``)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except Exception:  # not cached (or not an id at all)
        folder = None
    if folder is not None and folder.is_dir():
        return _read_files(folder, text_field, id_field, keep, "raise", on_duplicate_id, None,
                           fmt)
    if not downloads_allowed():
        raise DataError(
            f"{name}: not a local path, and not a dataset in the Hugging Face cache; datadiet "
            f"downloads nothing at run time. Cached datasets: {', '.join(cached_hub_repos('dataset')) or 'none'}. "
            f"To add it: `hf download {name} --repo-type dataset` once while online, give a "
            "local file or folder, or set DATADIET_ALLOW_DOWNLOADS=1 to let datadiet fetch it")
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split)
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError...
        raise DataError(f"{name}: not a local path, and loading it from the Hugging Face hub "
                        f"failed: {type(exc).__name__}: {exc}") from exc
    return _from_dataset(ds, f"hf://{name}:{split}", text_field, id_field, keep, on_duplicate_id,
                         fmt)


def _from_dataset(ds: Dataset, source: str, text_field: str, id_field: str,
                  keep: list[str] | None, on_duplicate_id: OnDuplicateId,
                  fmt: RecordFormat | None = None) -> LoadedCorpus:
    """Check a Dataset's text column (rendering fine-tuning records into it) and give it ids
    by the id rule.

    ``keep=None`` keeps every column (the Python API); a list keeps id, text, the format's
    columns and those.
    """
    from datasets import Dataset, DatasetInfo, Value
    from datasets.table import InMemoryTable

    if fmt is None:
        try:
            if keep is None and text_field not in ds.column_names:  # the Python API
                fmt = sft_format(ds.column_names, None, text_field, step="curate")
            else:
                fmt = detect_format([c for c in ds.column_names if c != id_field], text_field,
                                    noun="columns")
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from None
    if not fmt.is_text:
        if text_field in ds.column_names:
            raise DataError(f"{source}: column {text_field!r} would be replaced by the rendered "
                            f"{fmt.kind} record; pass another text_field")
        try:
            ds = with_text(ds, fmt, text_field)
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from None
        if keep is not None:
            keep = [*fmt.data_columns, *keep]
    if text_field not in ds.column_names:
        raise DataError(
            f"{source}: missing text field {text_field!r} (columns: {', '.join(ds.column_names)})"
        )
    feature = ds.features[text_field]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise DataError(f"{source}: column {text_field!r} is {feature}, not a string column")
    wanted = ds.column_names if keep is None else \
        [c for c in dict.fromkeys([id_field, text_field, *keep]) if c in ds.column_names]
    table = ds.select_columns(wanted).with_format("arrow")[:]
    texts = table.column(text_field)
    if texts.null_count:
        row = int(np.flatnonzero(null_mask(texts))[0]) + 1
        raise DataError(f"{source} row {row}: field {text_field!r} is null")
    if len(table) == 0:
        raise DataError(f"{source}: no records (an empty dataset)")
    if id_field in table.column_names:
        ids = table.column(id_field)
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)
                or pa.types.is_integer(ids.type)):
            raise DataError(f"{source}: column {id_field!r} is {ids.type}, not a string or integer")
        ids = ids.cast(pa.string())
        missing = null_mask(ids)
        if missing.any():
            idx = np.flatnonzero(missing)
            hashes = [content_id(t) for t in texts.take(pa.array(idx)).to_pylist()]
            ids = pc.replace_with_mask(ids.combine_chunks(), pa.array(missing),
                                       pa.array(hashes, pa.string()))
        from_data = ~missing
    else:
        ids = pa.array([content_id(t) for t in texts.to_pylist()], pa.string())
        from_data = np.zeros(len(table), dtype=bool)
    new_ids, renamed = unique_ids(ids, from_data, lambda r: f"{source} row {r + 1}",
                                  on_duplicate_id)
    ids = new_ids if new_ids is not None else ids
    if keep is None and new_ids is None and from_data.all() \
            and ds.features.get(id_field) == Value("string"):
        return LoadedCorpus(source=source, fingerprint=ds._fingerprint, record_format=fmt,
                            given_dataset=ds)
    if id_field in table.column_names:
        table = table.set_column(table.column_names.index(id_field), id_field, ids)
    else:
        table = table.add_column(0, id_field, ids)
    features = ds.features.copy()
    features[id_field] = Value("string")
    info = DatasetInfo(features=type(features)({c: features[c] for c in table.column_names}))
    fingerprint = xxhash.xxh3_128_hexdigest(f"{ds._fingerprint}:{id_field}:{text_field}".encode())
    out = Dataset(InMemoryTable(table), info=info, fingerprint=fingerprint)
    return LoadedCorpus(source=source, fingerprint=fingerprint, renamed_ids=renamed,
                        record_format=fmt, given_dataset=out)


# -- writing --------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def refuse_output_over_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                              *, flag: str = "--out") -> Path:
    """Refuse an output that is, holds, or sits inside one of its inputs; return it resolved.

    Replacing such a folder deletes the input (``curate inp --out inp --overwrite`` did), and
    writing inside an input folder makes the next read of that folder take the output for data.
    """
    target = Path(out).expanduser().resolve()
    for source in inputs:
        src = Path(source).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if target == src or target in src.parents:
            raise OutputError(f"{flag} {out}: holds the input {source}; writing it would replace "
                              "the input. Choose another output folder")
        if src.is_dir() and src in target.parents:
            raise OutputError(f"{flag} {out}: is inside the input folder {source}; choose an "
                              "output folder outside it")
    return target


def check_output_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
                     overwrite: bool = False, flag: str = "--out") -> Path:
    """Everything that can be known about an output folder before any work is done.

    It must not be or hold an input; an existing folder is replaced only with ``overwrite``
    and only if datadiet wrote it (it has a manifest, see :func:`find_manifest`), so
    ``--overwrite`` can never
    delete a folder of the user's own; and its location must be writable, so a permission
    problem shows before the work, not after it. The writer asks the same again at the
    moment it replaces the folder (:func:`output_guard`).
    """
    target = refuse_output_over_inputs(out, inputs, flag=flag)
    if _nearest_existing(target.parent) == target.parent:
        sweep_leftovers(out)  # a killed run's temp copy; its old output, if it was mid-swap
    if target.exists():
        refuse_to_replace(target, out, overwrite, flag)
    parent = _nearest_existing(target.parent)
    if not parent.is_dir():
        raise OutputError(f"{flag} {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: cannot write in {parent} (permission denied)")
    return target


def refuse_to_replace(existing: Path, out: str | os.PathLike, overwrite: bool,
                      flag: str = "--out") -> None:
    """Raise unless the folder at ``existing`` may be replaced: ``overwrite`` was given and
    datadiet wrote it (its marker, a manifest where :func:`find_manifest` looks, is there)."""
    if not existing.is_dir():
        raise OutputError(f"{flag} {out}: exists and is not a folder")
    if not overwrite:
        raise OutputError(f"{flag} {out}: output exists (pass --overwrite to replace it)")
    if find_manifest(existing) is None:
        raise OutputError(f"{flag} {out}: exists and was not written by datadiet (no "
                          f"{MANIFEST_FILE}); refusing to replace it even with --overwrite")


def output_guard(out: str | os.PathLike, overwrite: bool, flag: str = "--out"
                 ) -> Callable[[Path], None]:
    """The writer's check at swap time (see :func:`~datadiet.pipeline.atomic.atomic_path`):
    what is at ``out`` now may have been made while the run went on."""

    def guard(existing: Path) -> None:
        try:
            refuse_to_replace(existing, out, overwrite, flag)
        except OutputError as exc:
            raise OutputError(f"{exc} — it appeared or changed while this run was going on; "
                              "it was left as it is and nothing was written") from None

    return guard


def write_parquet_shards(ds: Dataset, folder: Path, rows_per_shard: int = 100_000,
                         prefix: str = "data",
                         transform: Callable[[pa.Table], pa.Table] | None = None) -> list[str]:
    """Write ``ds`` as ``{prefix}-00000-of-0000N.parquet`` shards; returns their names.
    ``transform`` (if given) maps each shard's table before it is written.

    Each shard is gathered once from the dataset's Arrow data (through its indices mapping,
    if it has one), so the rows a curation run kept are copied exactly once, here.
    """
    if rows_per_shard < 1:
        raise SpecError(f"rows per shard must be at least 1, not {rows_per_shard}")
    folder.mkdir(parents=True, exist_ok=True)
    n = len(ds)
    n_shards = max(1, -(-n // rows_per_shard))
    arrow = ds.with_format("arrow")
    names = []
    for i in range(n_shards):
        part = arrow[i * rows_per_shard : min(n, (i + 1) * rows_per_shard)]
        if transform is not None:
            part = transform(part)
        name = f"{prefix}-{i:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(part, folder / name)
        names.append(name)
    return names


#: Bytes of kept rows gathered before they are written as one Parquet row group: big enough
#: for readers (a group per 1 MB batch would make a file of thousands of tiny groups), small
#: enough that the writer holds a bounded slice of the output, not all of it.
ROW_GROUP_BYTES = 8 << 20


def write_batch_shards(batches: Iterable[pa.RecordBatch], keep: np.ndarray, folder: Path,
                       rows_per_shard: int = 100_000, prefix: str = "data",
                       drop: Sequence[str] = (),
                       extra: Mapping[str, np.ndarray] | None = None,
                       transform: Callable[[pa.Table], pa.Table] | None = None) -> list[str]:
    """Write the rows of ``batches`` where ``keep`` (a mask over all their rows) is True as
    ``{prefix}-00000-of-0000N.parquet`` shards, the same rows in the same files
    :func:`write_parquet_shards` writes; ``drop`` names columns left out, ``extra`` adds
    columns (a value per input row), ``transform`` maps each batch's kept rows. Memory: one
    batch plus one row group of kept rows
    (``ROW_GROUP_BYTES``)."""
    if rows_per_shard < 1:
        raise SpecError(f"rows per shard must be at least 1, not {rows_per_shard}")
    folder.mkdir(parents=True, exist_ok=True)
    n_kept = int(np.count_nonzero(keep))
    n_shards = max(1, -(-n_kept // rows_per_shard))
    names = [f"{prefix}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    writer = _ShardWriter(folder, names, rows_per_shard)
    start = 0
    try:
        for batch in batches:
            n = batch.num_rows
            mask = keep[start : start + n]
            table = pa.Table.from_batches([batch]).drop_columns(list(drop))
            for name, values in (extra or {}).items():
                table = table.append_column(name, arrow_floats(values[start : start + n]))
            start += n
            kept = table.filter(arrow_bools(mask)) if not mask.all() else table
            writer.add(transform(kept) if transform is not None else kept)
        writer.close()
    finally:
        writer.abort()
    return names


class _ShardWriter:
    """Rows in, shards of ``rows_per_shard`` rows out, each written in row groups of about
    ``ROW_GROUP_BYTES``; an empty output is one empty shard with the input's columns."""

    def __init__(self, folder: Path, names: list[str], rows_per_shard: int) -> None:
        self.folder, self.names, self.rows_per_shard = folder, names, rows_per_shard
        self.writer: pq.ParquetWriter | None = None
        self.shard = self.in_shard = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = self.pending_bytes = 0
        self.schema: pa.Schema | None = None

    def add(self, table: pa.Table) -> None:
        self.schema = table.schema
        while len(table):
            room = self.rows_per_shard - self.in_shard - self.pending_rows
            part = table.slice(0, room)
            self.pending.append(part)
            self.pending_rows += len(part)
            self.pending_bytes += part.nbytes
            table = table.slice(len(part))
            if self.pending_bytes >= ROW_GROUP_BYTES or len(part) == room:
                self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.folder / self.names[self.shard], self.schema)
        group = pa.concat_tables(self.pending)
        self.writer.write_table(group, row_group_size=len(group))
        self.in_shard += len(group)
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        if self.in_shard == self.rows_per_shard:
            self.writer.close()
            self.writer, self.shard, self.in_shard = None, self.shard + 1, 0

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        elif self.shard == 0 and self.schema is not None:  # nothing kept
            pq.write_table(self.schema.empty_table(), self.folder / self.names[0])

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class AtomicOutputDir:
    """An output folder written through :func:`atomic_path`, refusing to replace by accident.

    An existing output is replaced only with ``overwrite=True`` and only if it is a datadiet
    output at the moment of the swap; the old one stays intact until the new one is complete.
    """

    def __init__(self, target: str | os.PathLike, overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self._ctx: Any = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise OutputError(f"{self.target}: output exists (pass --overwrite to replace it)")
        self._ctx = atomic_path(self.target, is_dir=True,
                                guard=output_guard(self.target, self.overwrite))
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
