"""Token files that training jobs load as they are: ``datadiet export`` writes them, ``datadiet
train --data`` reads them.

Why: a curated dataset is text; pre-training stacks read token files. Every user would otherwise
write the same slow script (``datasets.map`` with a tokenizer, then a writer). One token stream,
each document followed by the tokenizer's end-of-text id, is written once as ``tokens.bin``:

- the flat memmap nanoGPT-style trainers read (``np.memmap("tokens.bin", dtype)``, ``uint16``
  when the vocabulary fits, else ``uint32``) with its sidecar ``tokens.json``;
- with ``tokens.idx`` beside it, Megatron-LM's indexed dataset (``IndexedDataset("…/tokens")``):
  the ``.bin`` of Megatron *is* that stream (one sequence per document, end-of-text included,
  ``int32`` codes where the flat file says ``uint32``: the same bytes below 2³¹);
- ``litdata/``: LitData's optimized format, read by ``StreamingDataset(…,
  item_loader=TokensLoader(block_size))``.

The export folder's ``manifest.json`` records the input, the tokenizer (name and a hash of its
vocabulary and rules), documents and tokens. Speed: Arrow batches from the one reader, split
over a thread pool calling the Rust tokenizer's batch API (it releases the GIL), in input order,
a bounded number in flight: memory is a few batches plus 12 bytes per document for the index.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from datadiet import __version__
from datadiet.pipeline.io import (
    AtomicOutputDir,
    DataError,
    OnError,
    SpecError,
    atomic_write_json,
    check_output_dir,
    load_corpus,
    reads_as_files,
    scratch_dir,
    stream_corpus,
)
from datadiet.pipeline.models.tokenizer import ByteTokenizer, load_rust_tokenizer, tokenizer_hash

__all__ = ["FORMATS", "ExportResult", "TokenEncoder", "TokenFile", "export_tokens",
           "is_token_export", "read_token_file"]

FORMATS = ("megatron", "memmap", "litdata")
DEFAULT_FORMATS = ("megatron", "memmap")
TOKENS_BIN = "tokens.bin"
TOKENS_IDX = "tokens.idx"
SIDECAR = "tokens.json"
LITDATA_DIR = "litdata"
EXPORT_MANIFEST = "manifest.json"
#: Megatron-LM's index header and version, and its codes for the token dtypes written here.
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
#: Rows per tokenizer call: big enough to amortise the call, small enough to spread a batch
#: over the threads.
PIECE_ROWS = 1_000
LITDATA_CHUNK_BYTES = 64 << 20


# -- tokenizing ---------------------------------------------------------------------------------


@dataclass
class TokenEncoder:
    """A tokenizer as export needs it: texts in, one flat token array (each document followed
    by ``eos_id``) and per-document lengths out; plus its identity for the manifest."""

    name: str
    hash: str
    vocab_size: int
    eos_id: int
    encode: Callable[[pa.Array], tuple[np.ndarray, np.ndarray]] = field(repr=False)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    @classmethod
    def load(cls, spec: str | os.PathLike | None) -> TokenEncoder:
        """``None`` (SmolLM2's, offline), ``"bytes"``, or a local tokenizer / model folder."""
        try:
            tok = load_rust_tokenizer(spec)
        except ValueError as exc:
            raise SpecError(f"--tokenizer: {exc}") from None
        if isinstance(tok, ByteTokenizer):
            return cls("bytes", "bytes", tok.vocab_size, tok.eos_token_id, _byte_encoder(tok))
        return cls(tok.name, tokenizer_hash(tok), len(tok), tok.eos_token_id,
                   _rust_encoder(tok.backend, tok.eos_token_id, len(tok)))


def _byte_encoder(tok: ByteTokenizer) -> Callable[[pa.Array], tuple[np.ndarray, np.ndarray]]:
    """UTF-8 bytes straight from the Arrow buffers, end-of-text inserted by NumPy: no Python
    loop over documents."""
    eos = tok.eos_token_id

    def encode(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        texts = texts.cast(pa.large_string())
        offsets = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset:
                                                               texts.offset + len(texts) + 1]
        data = np.frombuffer(texts.buffers()[2] or b"", np.uint8)[offsets[0]: offsets[-1]]
        tokens = np.insert(data.astype(np.uint16), offsets[1:] - offsets[0], eos)
        return tokens, (np.diff(offsets) + 1).astype(np.int32)

    return encode


def _rust_encoder(backend: Any, eos: int,
                  vocab_size: int) -> Callable[[pa.Array], tuple[np.ndarray, np.ndarray]]:
    """The Rust tokenizer's batch call (no offsets computed: ``encode_batch_fast``)."""
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        ids = [e.ids for e in batch(texts.to_pylist(), add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype, count=int(lengths.sum()))
        return np.insert(flat, np.cumsum(lengths), eos), (lengths + 1).astype(np.int32)

    return encode


# -- writing ------------------------------------------------------------------------------------


class _TokenWriter:
    """One token stream in, the chosen formats out (``tokens.bin`` is shared by two of them)."""

    def __init__(self, folder: Path, formats: Sequence[str], dtype: np.dtype) -> None:
        self.folder, self.formats, self.dtype = folder, tuple(formats), dtype
        self.bin = open(folder / TOKENS_BIN, "wb") if {"megatron", "memmap"} & set(formats) \
            else None
        self.lengths: list[np.ndarray] = []
        self.tokens = 0
        self.lit: Any = None
        if "litdata" in formats:
            from litdata.streaming.item_loader import TokensLoader  # optional extra: export
            from litdata.streaming.writer import BinaryWriter

            self.lit = BinaryWriter(str(folder / LITDATA_DIR), chunk_bytes=LITDATA_CHUNK_BYTES,
                                    item_loader=TokensLoader())
            self.lit_items = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.bin is not None:
            self.bin.write(tokens.tobytes())
        if self.lit is not None and len(tokens):
            import torch  # with litdata, which needs it

            as_torch = tokens if tokens.dtype == np.uint16 else tokens.astype(np.int32)
            self.lit.add_item(self.lit_items, torch.from_numpy(as_torch))
            self.lit_items += 1
        self.lengths.append(lengths)
        self.tokens += len(tokens)

    def close(self) -> dict[str, Any]:
        """Finish every format; returns the counts."""
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        if self.bin is not None:
            self.bin.close()
            self.bin = None
        if "megatron" in self.formats:
            write_megatron_index(self.folder / TOKENS_IDX, lengths, self.dtype)
        if self.lit is not None:
            self.lit.done()
            self.lit.merge()
        return {"documents": len(lengths), "tokens": self.tokens,
                "max_document_tokens": int(lengths.max()) if len(lengths) else 0}

    def abort(self) -> None:
        if self.bin is not None:
            self.bin.close()


def write_megatron_index(path: Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Megatron-LM's ``.idx``: header, then per sequence (here: per document) its length and
    byte offset, then the document boundaries."""
    mega = np.dtype(np.int32) if dtype == np.uint32 else dtype
    pointers = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * mega.itemsize, out=pointers[1:])
    with open(path, "wb") as fh:
        fh.write(MEGATRON_MAGIC)
        fh.write(struct.pack("<Q", 1))
        fh.write(struct.pack("<B", MEGATRON_DTYPE_CODES[mega]))
        fh.write(struct.pack("<Q", len(lengths)))
        fh.write(struct.pack("<Q", len(lengths) + 1))
        fh.write(lengths.astype(np.int32).tobytes())
        fh.write(pointers.tobytes())
        fh.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise SpecError(f"--format: {', '.join(unknown) or 'empty'}: choose from "
                        f"{', '.join(FORMATS)}")
    return chosen


class _InOrder:
    """Tokenize pieces on a thread pool, hand results to the writer in input order, at most
    ``2 × workers`` pieces in flight (the memory bound)."""

    def __init__(self, encode: Callable, writer: _TokenWriter, workers: int) -> None:
        self.encode, self.writer, self.workers = encode, writer, workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="datadiet-tokenize")
        self.pending: deque[Future] = deque()

    def batch(self, texts: pa.Array) -> None:
        for start in range(0, len(texts), PIECE_ROWS):
            self.pending.append(self.pool.submit(self.encode, texts.slice(start, PIECE_ROWS)))
            while len(self.pending) > 2 * self.workers:
                self.writer.add(*self.pending.popleft().result())

    def drain(self) -> None:
        while self.pending:
            self.writer.add(*self.pending.popleft().result())

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def export_tokens(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    formats: Iterable[str] = DEFAULT_FORMATS,
    text_field: str = "text",
    id_field: str = "id",
    on_error: OnError = "raise",
    workers: int | None = None,
    overwrite: bool = False,
    fields: str | dict | None = "auto",
) -> ExportResult:
    """Tokenize ``source`` (a curated output or anything the reader takes) into ``out/``."""
    chosen = _check_formats(formats)
    workers = workers or os.cpu_count() or 1
    check_output_dir(out, [source], overwrite=overwrite)
    encoder = TokenEncoder.load(tokenizer)
    started = time.perf_counter()
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        writer = _TokenWriter(tmp, chosen, encoder.dtype)
        flow = _InOrder(encoder.encode, writer, workers)
        try:
            report = _read_into(source, lambda b: flow.batch(b.column(text_field)), text_field,
                                id_field, on_error, fields)
            flow.drain()
            counts = writer.close()
        finally:
            flow.close()
            writer.abort()
        manifest = _export_manifest(report, encoder, chosen, counts, text_field,
                                    time.perf_counter() - started)
        atomic_write_json(tmp / SIDECAR, manifest["memmap"])
        atomic_write_json(tmp / EXPORT_MANIFEST, manifest)
    return ExportResult(Path(out), manifest)


def _read_into(source: str | os.PathLike, on_batch: Callable[[pa.RecordBatch], None],
               text_field: str, id_field: str, on_error: OnError,
               fields: str | dict | None) -> Any:
    """Hand ``source``'s batches to ``on_batch`` through the one reader (streamed for files and
    folders, loaded for a saved dataset or a hub id); returns its read report."""
    options = {"text_field": text_field, "id_field": id_field, "on_error": on_error,
               "fields": fields}
    if reads_as_files(source):
        with scratch_dir("datadiet-export-") as work:
            return stream_corpus(source, on_batch, work, **options)
    loaded = load_corpus(source, **options)
    for batch in loaded.table.to_batches(max_chunksize=10_000):
        on_batch(batch)
    return loaded


def _export_manifest(report: Any, encoder: TokenEncoder, formats: tuple[str, ...],
                     counts: dict[str, Any], text_field: str, seconds: float) -> dict[str, Any]:
    """What was exported from what, with which tokenizer, and where each format's files are."""
    dtype = str(encoder.dtype)
    files = {"megatron": {"prefix": "tokens", "bin": TOKENS_BIN, "idx": TOKENS_IDX,
                          "dtype": "int32" if dtype == "uint32" else dtype},
             "memmap": {"bin": TOKENS_BIN, "sidecar": SIDECAR},
             "litdata": {"folder": LITDATA_DIR, "item_loader": "TokensLoader",
                         "dtype": dtype if dtype == "uint16" else "int32"}}
    return {
        "kind": "datadiet-token-export",
        "version": 1,
        "datadiet_version": __version__,
        "input": {"source": report.source, "fingerprint": report.fingerprint,
                  "text_field": text_field, "skipped": report.skipped_summary()},
        "tokenizer": {"name": encoder.name, "hash": encoder.hash,
                      "vocab_size": encoder.vocab_size, "eos_token_id": encoder.eos_id},
        **counts,
        "formats": {f: files[f] for f in formats},
        "memmap": {"file": TOKENS_BIN, "dtype": dtype, "tokens": counts["tokens"],
                   "documents": counts["documents"], "eos_token_id": encoder.eos_id,
                   "vocab_size": encoder.vocab_size, "tokenizer": encoder.name,
                   "tokenizer_hash": encoder.hash},
        "seconds": round(seconds, 3),
    }


# -- reading ------------------------------------------------------------------------------------


@dataclass
class TokenFile:
    """A token stream written by export, memory-mapped, with its sidecar's facts."""

    tokens: np.ndarray
    documents: int
    eos_token_id: int
    vocab_size: int
    tokenizer: str
    tokenizer_hash: str
    path: Path


def is_token_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an export folder, its ``tokens.bin`` or its ``tokens.json``."""
    return _sidecar_of(Path(path)) is not None


def _sidecar_of(path: Path) -> Path | None:
    if path.is_dir():
        return path / SIDECAR if (path / SIDECAR).is_file() else None
    if path.name in (TOKENS_BIN, SIDECAR) and (path.parent / SIDECAR).is_file():
        return path.parent / SIDECAR
    return None


def read_token_file(path: str | os.PathLike) -> TokenFile:
    """Memory-map the token stream of an export (folder, ``tokens.bin`` or ``tokens.json``);
    a sidecar that does not match its ``.bin`` is an error naming the file."""
    sidecar = _sidecar_of(Path(path))
    if sidecar is None:
        raise DataError(f"{path}: not a token export (no {SIDECAR} beside a {TOKENS_BIN})")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        dtype = np.dtype(info["dtype"])
        expected = int(info["tokens"])
        bin_path = sidecar.parent / info.get("file", TOKENS_BIN)
        meta = (int(info["documents"]), int(info["eos_token_id"]), int(info["vocab_size"]),
                str(info.get("tokenizer", "?")), str(info.get("tokenizer_hash", "?")))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{sidecar}: not a token sidecar ({type(exc).__name__}: {exc})") from None
    if dtype not in (np.uint16, np.uint32):
        raise DataError(f"{sidecar}: dtype {dtype}: expected uint16 or uint32")
    size = bin_path.stat().st_size if bin_path.is_file() else -1
    if size != expected * dtype.itemsize:
        raise DataError(f"{bin_path}: {size} bytes, but {sidecar.name} says {expected} "
                        f"{dtype} tokens ({expected * dtype.itemsize} bytes)")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
    return TokenFile(tokens, *meta, path=bin_path)
