"""The one reader: JSONL(.gz), Parquet and text files into a row sink, at two speeds.

* well-formed JSONL and Parquet go through pyarrow's C++ readers, a block at a time;
* a block that fails (or looks odd: a line that is not an object, a null text) goes through the
  line-by-line validator, whose only jobs are to name the bad line (``file:line``) or, with
  ``on_error="skip"``, to skip and count it.

Each input byte is read once: the block that is parsed is the block that is fingerprinted.
Also here: text documents from bytes (stdin, a prompt file) by the same ``.txt`` rule, and a
small JSONL iterator for tools and tests.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import xxhash

from datadiet.pipeline.errors import DataError
from datadiet.pipeline.io.arrow import arrow_bools, null_mask
from datadiet.pipeline.io.layout import (
    BLOCK_BYTES,
    JSONL_SUFFIXES,
    MAX_SKIPPED_EXAMPLES,
    PARQUET_SUFFIXES,
    UTF8_BOM,
    WRITE_BATCH_ROWS,
    OnDuplicateId,
    OnError,
    list_data_files,
)
from datadiet.pipeline.io.results import LoadedCorpus, SkippedRow, _where
from datadiet.pipeline.io.rows import _Rows
from datadiet.pipeline.io.signals import scratch_dir
from datadiet.pipeline.records import RecordFormat, detect_format, problem_with, render_text


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


def _report(reader: _Reader, path: Path, renamed: int) -> dict[str, Any]:
    """The :class:`ReadReport` fields of a read of ``path``."""
    return {"source": str(path), "fingerprint": reader.hasher.hexdigest(),
            "skipped": reader.skipped, "skipped_count": reader.skipped_count,
            "renamed_ids": renamed, "record_format": reader.fmt}


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Small helper for tests and tools: parsed records of a (gz) JSONL file."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
