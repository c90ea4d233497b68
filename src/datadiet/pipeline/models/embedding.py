"""The one embedder: sentence embeddings with a content-hash cache on disk.

Semantic dedup, k-center coresets and kNN demonstrations all embed the same texts again and
again across runs; a cache keyed by (model, hash of the text) makes the second run free. The model
part of the key is the model actually *loaded* — its name and a hash of its weight files — not the
name asked for, so ``$DATADIET_EMBEDDER`` or a retrained folder never gets another model's
vectors. SQLite is the store because it is in the standard library, safe for concurrent readers,
and atomic per transaction — a crashed run never leaves a torn cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datadiet.pipeline.ledger import MODEL_LOADING, Ledger, ModelShape
from datadiet.pipeline.models.loading import cache_dir as default_cache
from datadiet.pipeline.models.loading import (
    embedder_name,
    load_sentence_embedder,
    model_folder_hash,
    resolve_embedder,
)


def _weights_hash(path: str) -> str:
    """A short hash of a model folder's weights; a hub id is hashed from its cached snapshot."""
    folder = Path(path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(path, local_files_only=True))
    return model_folder_hash(folder)[:16]


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Embedder:
    """L2-normalised float32 sentence embeddings (default: all-MiniLM-L6-v2, offline).

    Args:
        model: a sentence-transformers id or local folder; ``None`` for ``$DATADIET_EMBEDDER``
            or the default.
        cache: keep vectors in ``<cache_dir>/embeddings/<model>-<weights hash>.sqlite`` keyed
            by text hash.
        ledger / stage: where tokens and FLOPs of the texts actually embedded are recorded
            (cache hits cost nothing, and the ledger shows it); loading the model is recorded
            under its own stage, ``"model-loading"``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 64,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        ledger: Ledger | None = None,
        stage: str = "embedding",
    ) -> None:
        self.model_name = embedder_name(model)
        loading = ledger.stage(MODEL_LOADING, at_root=True) if ledger is not None else None
        with loading or contextlib.nullcontext():
            self.model = load_sentence_embedder(model, device)
            #: What was loaded: the name and a hash of the weights (the cache's model key).
            self.model_id = f"{self.model_name}@{_weights_hash(resolve_embedder(model))}"
        self.batch_size = batch_size
        self.ledger = ledger
        self.stage = stage
        self.dim = int(self.model.get_embedding_dimension()
                       if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.hits = 0
        self.misses = 0
        try:
            self.shape = ModelShape.from_hf_config(self.model[0].auto_model.config)
        except Exception:  # a custom module without a HF config: no FLOP count
            self.shape = None
        self._db: sqlite3.Connection | None = None
        if cache:
            root = Path(cache_dir) if cache_dir else default_cache() / "embeddings"
            root.mkdir(parents=True, exist_ok=True)
            slug = self.model_id.replace("/", "--").replace(":", "_").replace("@", "-")
            self._db = sqlite3.connect(root / f"{slug}.sqlite", timeout=60)
            self._db.execute("CREATE TABLE IF NOT EXISTS vec (key BLOB PRIMARY KEY, v BLOB)")
            self._db.commit()

    def _lookup(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        if self._db is None:
            return found
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, v FROM vec WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _compute(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32)
        if self.ledger is not None:
            lengths = self.token_counts(texts)
            flops = 0.0
            if self.shape is not None:
                flops = sum(self.shape.flops(n, n, training=False) for n in lengths)
            self.ledger.add(self.stage, tokens=sum(lengths), flops=flops)
        return vecs

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model actually reads of each text: special tokens in, cut at the model's
        ``max_seq_length`` as ``encode`` cuts them (the FLOPs are spent on those only)."""
        limit = getattr(self.model, "max_seq_length", None)
        enc = self.model.tokenizer(list(texts), truncation=limit is not None, max_length=limit)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (shape ``(n, dim)``), computing only what the cache lacks."""
        timed = self.ledger.stage(self.stage) if self.ledger is not None else None
        with timed or contextlib.nullcontext():
            return self._encode(list(texts))

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        keys = [text_key(t) for t in texts]
        cached = self._lookup(list(set(keys)))
        todo: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            if key in cached:
                out[i] = cached[key]
            else:
                todo.setdefault(key, []).append(i)
        self.hits += len(texts) - sum(len(v) for v in todo.values())
        self.misses += sum(len(v) for v in todo.values())
        if todo:
            uniq = list(todo)
            vecs = self._compute([texts[todo[k][0]] for k in uniq])
            for key, vec in zip(uniq, vecs, strict=True):
                out[todo[key]] = vec
            if self._db is not None:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO vec VALUES (?, ?)",
                        [(k, v.tobytes()) for k, v in zip(uniq, vecs, strict=True)],
                    )
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
