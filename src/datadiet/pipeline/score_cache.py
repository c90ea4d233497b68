"""Per-row model scores cached on disk, so a score is paid for once.

Why: LM scores of instruction data (IFD losses, judge ratings) cost minutes to hours, and users
re-run selection with another ``keep`` or another step order many times. Scores are a function of
(what the row says, which model, which method, which window), so that tuple is the key and a
second run over the same rows makes no model call at all. Each chunk of rows is committed as soon
as it is scored, so a run that is killed half-way resumes from the last committed chunk.

SQLite for the same reasons as the embedding cache: standard library, safe with concurrent
readers, atomic per transaction (a kill never leaves a torn entry).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from datadiet.pipeline.errors import DataError, NoSpaceError, SpecError
from datadiet.pipeline.models.loading import DEFAULT_CAUSAL_LM, model_folder_hash, resolve_causal_lm
from datadiet.pipeline.models.loading import cache_dir as default_cache_dir

__all__ = ["ScoreCache", "cached_scores", "model_identity"]

def model_identity(name: str | None) -> dict[str, str | None]:
    """What the manifest (and the cache key) says about a causal LM, before or after loading.

    ``name`` as the user gave it (the default model when ``None``), the ``path`` it resolves
    to, the hub ``revision`` (snapshot commit) when it came from the hub, and ``hash``, a content
    hash of its config and weights — so two runs that say "the default model" but load
    different weights never share cached scores.
    """
    path = resolve_causal_lm(name)
    folder, revision = Path(path), None
    if not folder.is_dir():  # a hub id: its snapshot in the Hugging Face cache, if there
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json")
        if isinstance(found, str):
            folder = Path(found).parent
            revision = folder.name
    return {"name": name or os.environ.get("DATADIET_LM") or DEFAULT_CAUSAL_LM, "path": path,
            "revision": revision, "hash": model_folder_hash(folder) if folder.is_dir() else None}


class ScoreCache:
    """Per-row float vectors keyed by (row content hash, model, method, max_length).

    Args:
        model: the model key (see :func:`model_identity`; its hash or revision, not its name).
        method: the scoring method and its version (``"ifd-losses-v1"``); change the version
            when the computation changes, and old entries are simply never read.
        max_length: the token window, part of the key because it changes the scores.
        root: folder of the SQLite file; default ``<datadiet cache>/scores``.
    """

    def __init__(self, model: str, method: str, max_length: int,
                 root: str | os.PathLike | None = None) -> None:
        self.model = model
        self.method = method
        self.max_length = int(max_length)
        folder = Path(root).expanduser() if root else default_cache_dir() / "scores"
        if folder.exists() and not folder.is_dir():
            raise SpecError(f"{folder}: the score cache must be a folder, and this is a file")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "scores.sqlite"
        with self._sqlite("opening"):
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (row BLOB, model TEXT, method TEXT, "
                "max_length INTEGER, value BLOB, PRIMARY KEY (row, model, method, max_length))"
            )
            self._db.commit()
            (check,) = self._db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(check)

    @contextmanager
    def _sqlite(self, doing: str) -> Iterator[None]:
        """SQLite's errors as the user's: the file is named, and what to do about it."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "disk is full" in str(exc) or "disk I/O error" in str(exc):
                raise NoSpaceError(f"{self.path}: no space left for the score cache while "
                                   f"{doing} it ({exc}); free space there or set `cache:` "
                                   "to a folder on another disk") from None
            raise self._corrupt(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None

    def _corrupt(self, exc: Exception) -> DataError:
        return DataError(f"{self.path}: the score cache is unreadable ({exc}); move it away "
                         "(its scores are then computed again into a fresh cache) or run the "
                         "step with `cache: false`")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors of those ``keys`` that have one."""
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT row, value FROM scores WHERE model = ? AND method = ? AND max_length = ? "
                f"AND row IN ({marks})", [self.model, self.method, self.max_length, *chunk])
            with self._sqlite("reading"):
                for key, blob in rows:
                    if isinstance(blob, bytes) and len(blob) % 8 == 0:  # else: a miss, rescored
                        found[key] = np.frombuffer(blob, dtype=np.float64)
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """Store vectors and commit, so they survive a kill right after this call."""
        with self._sqlite("writing"), self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                [(k, self.model, self.method, self.max_length,
                  np.asarray(v, dtype=np.float64).tobytes()) for k, v in items],
            )

    def count(self) -> int:
        """Entries stored under this cache's model, method and window."""
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM scores WHERE model = ? AND method = ? AND max_length = ?",
            (self.model, self.method, self.max_length)).fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()


def cached_scores(
    keys: Sequence[bytes],
    compute: Callable[[list[int]], np.ndarray],
    cache: ScoreCache | None,
    *,
    width: int,
    costs: Sequence[int] | np.ndarray,
    chunk_cost: int,
    on_progress: Callable[[int], Any] | None = None,
) -> tuple[np.ndarray, int]:
    """Score rows through the cache: look every key up, compute the misses chunk by chunk.

    ``compute(rows)`` returns a ``(len(rows), width)`` array for those row indices. Rows with
    the same key are computed once. Chunks hold about ``chunk_cost`` (tokens, say, from
    ``costs``) and each is committed before the next starts: that is the resume point of a
    killed run. Returns the ``(n, width)`` values and the number of rows actually computed.
    """
    n = len(keys)
    values = np.full((n, width), np.nan, dtype=np.float64)
    found = cache.get_many(keys) if cache is not None else {}
    todo: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        if key in found and found[key].shape == (width,):  # a torn entry is scored again
            values[i] = found[key]
        else:
            todo.setdefault(key, []).append(i)
    if on_progress is not None:
        on_progress(n - sum(len(v) for v in todo.values()))
    pending = list(todo.items())
    computed = 0
    start = 0
    while start < len(pending):
        stop, total = start, 0
        while stop < len(pending) and (stop == start or total + costs[pending[stop][1][0]] <= chunk_cost):
            total += int(costs[pending[stop][1][0]])
            stop += 1
        chunk = pending[start:stop]
        result = np.asarray(compute([rows[0] for _, rows in chunk]), dtype=np.float64)
        for (_, rows), vec in zip(chunk, result, strict=True):
            values[rows] = vec
        if cache is not None:
            cache.put_many([(key, vec) for (key, _), vec in zip(chunk, result, strict=True)])
        computed += len(chunk)
        if on_progress is not None:
            on_progress(sum(len(rows) for _, rows in chunk))
        start = stop
    return values, computed
