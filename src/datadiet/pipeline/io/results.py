"""What reading a corpus returns: the rows (in memory, or streamed to a scratch file) and its
report — source, fingerprint, the rows skipped and why, ids renamed, the record format — which
the manifest records as its input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from datadiet.pipeline.io.arrow import as_dataset
from datadiet.pipeline.records import RecordFormat

if TYPE_CHECKING:
    from datasets import Dataset


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
