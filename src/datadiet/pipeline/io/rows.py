"""The row sink: validated rows of one corpus as Arrow batches, with where each row came from.

The reader (:mod:`datadiet.pipeline.io.reader`) fills it, whole columns at a time from the fast
readers or one row at a time from the validator; it spills to one Arrow file that is
memory-mapped and unlinked at once (a corpus larger than RAM is read in bounded memory and
nothing is left in ``$TMPDIR``), and applies the id rule at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datadiet.pipeline.errors import DataError
from datadiet.pipeline.io.arrow import null_mask
from datadiet.pipeline.io.ids import content_id, unique_ids
from datadiet.pipeline.io.layout import WRITE_BATCH_ROWS, OnDuplicateId
from datadiet.pipeline.io.results import _where


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
        # one copy of the ids, made before the id rule's hash table and instead of the
        # batches' (at 5M documents each copy is 200 MB, at the read's peak)
        ids = pa.chunked_array(self.id_chunks, pa.string()).combine_chunks()
        self.id_chunks = []
        new_ids, renamed = self._final_ids(ids, on_duplicate_id)
        return (ids if new_ids is None else new_ids), renamed

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
