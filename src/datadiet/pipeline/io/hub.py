"""Corpora that arrive as ``datasets.Dataset``: a Hugging Face hub id (from the local cache; no
download unless the user opted in), a saved dataset, or the caller's own ``Dataset`` — each
checked like a file and given ids by the one id rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from datadiet.pipeline.errors import DataError
from datadiet.pipeline.io.arrow import null_mask
from datadiet.pipeline.io.ids import content_id, unique_ids
from datadiet.pipeline.io.layout import OnDuplicateId
from datadiet.pipeline.io.reader import _read_files
from datadiet.pipeline.io.results import LoadedCorpus
from datadiet.pipeline.models.loading import cached_hub_repos, downloads_allowed
from datadiet.pipeline.records import RecordFormat, detect_format, sft_format, with_text

if TYPE_CHECKING:
    from datasets import Dataset


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
