"""Exact duplicate removal: one 128-bit hash of the normalised text per row.

Why: exact copies (mirrored pages, re-crawled documents, repeated templates) are the cheapest
tokens to save — they teach the model nothing new and bias it toward memorising. Hashing the
*normalised* text (see :func:`datadiet.pipeline.text.normalize`) also catches copies that differ
only in case, punctuation or whitespace.

Why this shape: the step streams the text column in batches and keeps only 16 bytes per row
(two ``uint64`` words of XXH3-128) in a NumPy array, never a Python set of strings, so a
hundred-million-row corpus needs 1.6 GB, not the corpus again. Grouping equal hashes is one
``np.lexsort``. The per-batch hash function (:func:`text_hashes`) is pure, so a Dask map over
shards can compute it and a single reduce can group the hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash
from datasets import Dataset

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import Step, StepContext, register_step
from datadiet.pipeline.text import normalize as normalize_text
from datadiet.selectors.common import row_ids

__all__ = ["ExactDedup", "first_occurrence", "text_hashes"]


def text_hashes(texts: Sequence[str], normalize: bool = True) -> np.ndarray:
    """XXH3-128 digest of each (optionally normalised) text, as a ``(n, 2) uint64`` array."""
    prepared = (normalize_text(t) for t in texts) if normalize else texts
    digests = b"".join(xxhash.xxh3_128_digest(t.encode("utf-8", "surrogatepass")) for t in prepared)
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2).copy()


def first_occurrence(hashes: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row with the same hash (itself if it is first).

    A lexicographic sort on (hash, row) puts each group's earliest row first, so one pass over
    the sorted order assigns every member its group's first row.
    """
    n = len(hashes)
    if n == 0:
        return np.empty(0, np.int64)
    order = np.lexsort((np.arange(n), hashes[:, 1], hashes[:, 0]))
    h = hashes[order]
    new = np.empty(n, bool)
    new[0] = True
    new[1:] = (h[1:] != h[:-1]).any(axis=1)
    group_first = order[new]
    rep = np.empty(n, np.int64)
    rep[order] = group_first[np.cumsum(new) - 1]
    return rep


@register_step
class ExactDedup(Step):
    """Remove rows whose (normalised) text equals an earlier row's.

    The first occurrence is kept; every later copy is removed with reason
    ``"exact-duplicate-of:<id of the kept row>"``.

    Parameters:
        normalize: hash :func:`~datadiet.pipeline.text.normalize` of the text (case-folded,
            punctuation dropped, whitespace collapsed) instead of the raw text. Texts that
            normalise to nothing (empty, punctuation only) are then copies of one another.
    """

    name = "exact_dedup"

    def __init__(self, *, normalize: bool = True) -> None:
        self.normalize = normalize

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        n = len(ds)
        if n == 0:
            return Selection.keep_all(0)
        hashes = np.empty((n, 2), np.uint64)
        start = 0
        for batch in ctx.iter_texts(ds, desc="exact dedup"):
            hashes[start : start + len(batch)] = text_hashes(batch, self.normalize)
            start += len(batch)
        rep = first_occurrence(hashes)
        keep = rep == np.arange(n)
        detail = np.full(n, "", dtype=object)
        removed = np.flatnonzero(~keep)
        if len(removed):
            reps, inverse = np.unique(rep[removed], return_inverse=True)
            detail[removed] = row_ids(ds, ctx.id_field, reps)[inverse]
        stats = {
            "removed": int(len(removed)),
            "duplicate_groups": int(len(np.unique(rep[removed]))) if len(removed) else 0,
        }
        return Selection.from_mask(keep, "exact-duplicate-of", detail, stats=stats)
