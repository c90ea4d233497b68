"""Reading corpora into Arrow and writing outputs atomically: the one reader, the one writer.

This package is the public face of datadiet's I/O; import from ``datadiet.pipeline.io`` (every
name below is re-exported here), and read the module that holds a mechanism to understand it:

* :mod:`~datadiet.pipeline.io.corpus` — the entry points: :func:`load_corpus`,
  :func:`stream_corpus`, :func:`corpus_from_records`;
* :mod:`~datadiet.pipeline.io.reader` — the one reader of JSONL / Parquet / text bytes (fast
  Arrow blocks, a line-by-line validator that names ``file:line``), stdin text, ``iter_jsonl``;
* :mod:`~datadiet.pipeline.io.rows` — the row sink the reader fills (Arrow batches, spilled to a
  memory-mapped scratch file);
* :mod:`~datadiet.pipeline.io.ids` — THE id rule; :mod:`~datadiet.pipeline.io.results` — what a
  read returns (rows and the report the manifest records);
* :mod:`~datadiet.pipeline.io.hub` — ``datasets.Dataset`` inputs: the hub cache, saved datasets;
* :mod:`~datadiet.pipeline.io.fingerprint` — input fingerprints without parsing;
* :mod:`~datadiet.pipeline.io.layout` — file names of a curated output, its manifest, the
  removed rows, the data files of a folder, local-path rules;
* :mod:`~datadiet.pipeline.io.guards` — output folder checks (never over an input, never a
  folder datadiet did not write); :mod:`~datadiet.pipeline.io.writers` — the Parquet shard
  writers and the atomic output folder;
* :mod:`~datadiet.pipeline.io.signals` — scratch folders and SIGTERM cleanup;
* :mod:`~datadiet.pipeline.io.arrow` — Arrow <-> NumPy without pandas, ``Dataset`` on demand.

The errors (:mod:`datadiet.pipeline.errors`) and the atomic writer
(:mod:`datadiet.pipeline.atomic`) are re-exported too: ``io`` is where users look for them.

Why a facade: ``datadiet.pipeline.io`` is the documented import path (the top-level API, the
docs and every room of the package use it), so the split into modules changed no caller.
"""

from __future__ import annotations

from datadiet.pipeline.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    follow_umask,
    owned_temp_dir,
    sweep_leftovers,
)
from datadiet.pipeline.errors import (
    DataError,
    NoSpaceError,
    OutputError,
    SpecError,
    UserError,
    is_no_space,
)
from datadiet.pipeline.io.arrow import (
    arrow_bools,
    arrow_floats,
    arrow_ints,
    arrow_repeated,
    arrow_strings,
    as_dataset,
    is_dataset,
    null_mask,
    numpy_ints,
)
from datadiet.pipeline.io.corpus import (
    corpus_from_records,
    load_corpus,
    reads_as_files,
    stream_corpus,
)
from datadiet.pipeline.io.fingerprint import (
    fingerprint_files,
    source_fingerprint,
)
from datadiet.pipeline.io.guards import (
    check_output_dir,
    output_guard,
    refuse_output_over_inputs,
    refuse_to_replace,
)
from datadiet.pipeline.io.ids import (
    content_id,
    unique_ids,
)
from datadiet.pipeline.io.layout import (
    BLOCK_BYTES,
    CARD_FILE,
    DATA_SUFFIXES,
    JSONL_SUFFIXES,
    LEGACY_MANIFEST_FILE,
    LOCAL_SUFFIXES,
    MANIFEST_FILE,
    MAX_SKIPPED_EXAMPLES,
    META_DIR,
    PARQUET_SUFFIXES,
    REMOVED_FILE,
    TEXT_SUFFIXES,
    UTF8_BOM,
    WRITE_BATCH_ROWS,
    OnDuplicateId,
    OnError,
    find_manifest,
    list_data_files,
    looks_local,
    no_such_path,
    read_removed,
    write_removed,
)
from datadiet.pipeline.io.reader import (
    decode_utf8,
    iter_jsonl,
    read_stdin_bytes,
    text_documents,
)
from datadiet.pipeline.io.results import (
    LoadedCorpus,
    ReadReport,
    SkippedRow,
    StreamedCorpus,
)
from datadiet.pipeline.io.signals import (
    Terminated,
    install_signal_cleanup,
    scratch_dir,
)
from datadiet.pipeline.io.writers import (
    ROW_GROUP_BYTES,
    AtomicOutputDir,
    write_batch_shards,
    write_parquet_shards,
)

__all__ = [
    "AtomicOutputDir",
    "BLOCK_BYTES",
    "CARD_FILE",
    "DATA_SUFFIXES",
    "DataError",
    "JSONL_SUFFIXES",
    "LEGACY_MANIFEST_FILE",
    "LOCAL_SUFFIXES",
    "LoadedCorpus",
    "MANIFEST_FILE",
    "MAX_SKIPPED_EXAMPLES",
    "META_DIR",
    "NoSpaceError",
    "OnDuplicateId",
    "OnError",
    "OutputError",
    "PARQUET_SUFFIXES",
    "REMOVED_FILE",
    "ROW_GROUP_BYTES",
    "ReadReport",
    "SkippedRow",
    "SpecError",
    "StreamedCorpus",
    "TEXT_SUFFIXES",
    "Terminated",
    "UTF8_BOM",
    "UserError",
    "WRITE_BATCH_ROWS",
    "arrow_bools",
    "arrow_floats",
    "arrow_ints",
    "arrow_repeated",
    "arrow_strings",
    "as_dataset",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "content_id",
    "corpus_from_records",
    "decode_utf8",
    "find_manifest",
    "fingerprint_files",
    "follow_umask",
    "install_signal_cleanup",
    "is_dataset",
    "is_no_space",
    "iter_jsonl",
    "list_data_files",
    "load_corpus",
    "looks_local",
    "no_such_path",
    "null_mask",
    "numpy_ints",
    "output_guard",
    "owned_temp_dir",
    "read_removed",
    "read_stdin_bytes",
    "reads_as_files",
    "refuse_output_over_inputs",
    "refuse_to_replace",
    "scratch_dir",
    "source_fingerprint",
    "stream_corpus",
    "sweep_leftovers",
    "text_documents",
    "unique_ids",
    "write_batch_shards",
    "write_parquet_shards",
    "write_removed",
]
