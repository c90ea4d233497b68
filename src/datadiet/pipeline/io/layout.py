"""What a datadiet folder looks like on disk, and where data files are: the names of the files a
curated output holds (data shards at the top, datadiet's own files in ``.datadiet/``), finding
its manifest, the removed-rows table, the data files of any folder, and whether a name can only
be a local path.

Why one module: the reader, the writers, the output guards and ``datadiet why`` all ask these
questions; one answer each keeps them agreeing on what is data and what is datadiet's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from datadiet.pipeline.errors import DataError

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
