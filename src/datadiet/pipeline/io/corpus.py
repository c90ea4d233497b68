"""The entry points of reading: :func:`load_corpus` (every kind of source, into Arrow),
:func:`stream_corpus` (data files, batch by batch to a consumer) and
:func:`corpus_from_records` (a ``Dataset`` or a list of dicts), with the same checks, errors and
id rule for each.

Why not ``datasets.load_dataset("json", ...)`` for local files: on a malformed line it raises an
error that names neither the file nor the line, it cannot skip-and-count bad rows, and it
guesses schemas. datadiet reads every input itself (:mod:`datadiet.pipeline.io.reader`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from datadiet.pipeline.errors import DataError, SpecError
from datadiet.pipeline.io.arrow import is_dataset
from datadiet.pipeline.io.fingerprint import _is_saved_dataset
from datadiet.pipeline.io.hub import _from_dataset, _load_hub
from datadiet.pipeline.io.layout import OnDuplicateId, OnError, looks_local, no_such_path
from datadiet.pipeline.io.reader import _read_all, _read_files, _Reader, _report
from datadiet.pipeline.io.results import LoadedCorpus, StreamedCorpus
from datadiet.pipeline.io.rows import _Rows
from datadiet.pipeline.records import RecordFormat, parse_fields

if TYPE_CHECKING:
    from datasets import Dataset


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


def reads_as_files(source: Any) -> bool:
    """Whether ``source`` names local data files or a folder of them (not a saved dataset):
    what :func:`stream_corpus` reads."""
    if not isinstance(source, str | os.PathLike):
        return False
    path = Path(source).expanduser()
    return path.exists() and not (path.is_dir() and _is_saved_dataset(path))


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
