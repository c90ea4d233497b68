"""The shard writers: kept rows as ``data-0000i-of-0000N.parquet`` shards (from a ``Dataset`` or
streamed batch by batch in bounded memory), and an output folder written through the one
atomic writer (:mod:`datadiet.pipeline.atomic`) that refuses to replace by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datadiet.pipeline.atomic import atomic_path
from datadiet.pipeline.errors import OutputError, SpecError
from datadiet.pipeline.io.arrow import arrow_bools, arrow_floats
from datadiet.pipeline.io.guards import output_guard

if TYPE_CHECKING:
    from datasets import Dataset


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
