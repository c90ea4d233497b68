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

import functools
import re
import unicodedata
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import DuplicateGroups, Step, StepContext, register_step
from datadiet.pipeline.text import normalize as normalize_text
from datadiet.selectors import native
from datadiet.selectors.common import row_ids
from datadiet.selectors.hashing import (
    KERNEL_BATCH,
    Texts,
    as_str_list,
    casefold_table,
    non_ascii_texts,
    text_getter,
    utf8_layout,
    word_char_table,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["ExactDedup", "first_occurrence", "normalized_utf8", "text_hashes"]


def text_hashes(texts: Texts, normalize: bool = True) -> np.ndarray:
    """XXH3-128 digest of each (optionally normalised) text, as a ``(n, 2) uint64`` array.

    The per-shard half of exact dedup: a pure function of the texts (Python strings or an
    Arrow string column), so shards hashed on different workers group correctly in
    :func:`first_occurrence`, the global reduce. The digest is of the UTF-8 bytes of
    :func:`datadiet.pipeline.text.normalize` (or of the raw text), however computed.
    """
    if normalize:
        parts = _normalized_parts(texts)
    else:
        buf, offsets = utf8_layout(texts)
        parts = [(np.arange(len(offsets) - 1), buf, offsets[:-1], np.diff(offsets))]
    out = np.empty((sum(len(rows) for rows, *_ in parts), 2), np.uint64)
    digest = xxhash.xxh3_128_digest
    for rows, buf, starts, lengths in parts:
        view = memoryview(buf)
        digests = b"".join([digest(view[s : s + k])
                            for s, k in zip(starts.tolist(), lengths.tolist(), strict=True)])
        out[rows] = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)
    return out


# NFKC never changes a text across an ASCII character (ASCII is never decomposed, never the
# second half of a composition, and a starter, so no reordering crosses it); what changes is a
# run of non-ASCII characters together with the ASCII character before it ("e" + U+0301 -> "é").
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def _nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, normalising only the non-ASCII segments that
    are not normalised already (a long text with a few compatibility characters costs a few
    short normalisations, not one over the whole text)."""
    out: list[str] = []
    done = 0
    for run in _NON_ASCII_RUN.finditer(text):
        start, end = max(run.start() - 1, 0), run.end()
        segment = text[start:end]
        if not unicodedata.is_normalized("NFKC", segment):
            out += (text[done:start], unicodedata.normalize("NFKC", segment))
            done = end
    out.append(text[done:])
    return "".join(out)


def normalized_utf8(texts: Texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The UTF-8 bytes of ``normalize(t)`` for every text, without a Python string per text.

    Returns ``(buf, starts, lengths)``: text ``i`` normalises to
    ``buf[starts[i] : starts[i] + lengths[i]]``. See :func:`_normalized_parts`.
    """
    parts = _normalized_parts(texts)
    n = sum(len(rows) for rows, *_ in parts)
    starts = np.zeros(n, np.int64)
    lengths = np.zeros(n, np.int64)
    base = 0
    for rows, buf, part_starts, part_lengths in parts:
        starts[rows] = part_starts + base
        lengths[rows] = part_lengths
        base += len(buf)
    return np.concatenate([part[1] for part in parts]), starts, lengths


#: ``(rows, buf, starts, lengths)``: the normalised UTF-8 of texts ``rows`` (text ``rows[k]``
#: is ``buf[starts[k] : starts[k] + lengths[k]]``).
NormalizedPart = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _normalized_parts(texts: Texts) -> list[NormalizedPart]:
    """``normalize(t)`` of every text as UTF-8, in one or two parts: the texts the C
    kernel normalised, and the few Python had to (kept apart: joining them into one buffer
    would copy the whole batch again).

    ``normalize`` is NFKC, ``casefold``, every non-word character a separator, words joined by
    one space. The kernel does it in one pass over the bytes, documents in parallel: case
    folding is a lookup per code point, and with the C kernels' NFKC classes (built from
    ``unicodedata`` at install) so is NFKC for all but combining characters. Python normalises
    the texts the kernel gives back: those with a character whose NFKC depends on its
    neighbours, or a fold it cannot write in place (``ß`` -> ``ss``). Without those classes
    (a table file from another Unicode version), Python first asks
    ``unicodedata.is_normalized`` of every non-ASCII text. Without the C library the fallback is
    :func:`~datadiet.pipeline.text.normalize` itself, per text (see
    :mod:`datadiet.selectors.hashing`).
    """
    if not native.available():  # the fallback (no C library): normalize() itself, per text
        encoded = [normalize_text(t).encode("utf-8", "surrogatepass") for t in as_str_list(texts)]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        starts = np.zeros(len(encoded), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return [(np.arange(len(encoded)), np.frombuffer(b"".join(encoded), np.uint8), starts,
                 lengths)]
    kernel = native.normalize
    buf, offsets = utf8_layout(texts)
    text = text_getter(texts, buf, offsets)
    mode = np.zeros(len(offsets) - 1, np.uint8)  # 0: the kernel folds, 2: Python first
    if native.nfkc_tables() is not None:
        out, lengths = kernel(buf, offsets, mode, *_normalize_tables(), with_nfkc=True)
    else:
        for i in non_ascii_texts(buf, offsets).tolist():
            if not unicodedata.is_normalized("NFKC", text(i)):
                mode[i] = 2
        out, lengths = kernel(buf, offsets, mode, *_normalize_tables())
    redo = np.flatnonzero(lengths < 0)
    kept = np.flatnonzero(lengths >= 0)
    parts = [(kept, out, offsets[kept], lengths[kept])]
    if len(redo):
        # NFKC and case fold in Python (NFKC of an NFKC text is only a check); then the same
        # kernel, told not to fold again, drops punctuation and collapses white space.
        folded = [_nfkc(text(i)).casefold() for i in redo.tolist()]
        fbuf, fstarts = utf8_layout(folded)
        fout, flengths = kernel(fbuf, fstarts, np.ones(len(folded), np.uint8),
                                *_normalize_tables())
        parts.append((redo, fout, fstarts[:-1], flengths))
    return parts


@functools.cache
def _normalize_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(case fold per code point, ``\\w`` per code point, ASCII byte -> folded word byte or 0)."""
    word = word_char_table()
    ascii_word = np.array(
        [ord(chr(b).casefold()) if word[b] else 0 for b in range(128)], dtype=np.uint8
    )
    return casefold_table(), word, ascii_word


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
        batch_size = max(ctx.batch_size, KERNEL_BATCH)
        for batch in ctx.iter_text_arrays(ds, desc="exact dedup", batch_size=batch_size):
            hashes[start : start + len(batch)] = text_hashes(batch, self.normalize)
            start += len(batch)
        return self.select_from_features(ds, ctx, {"hashes": hashes})

    def row_features(self, texts: Texts) -> dict[str, np.ndarray]:
        """The map half: each text's 128-bit hash (a pure function of the text)."""
        return {"hashes": text_hashes(texts, self.normalize)}

    def select_from_features(self, ds: Dataset, ctx: StepContext,
                             features: dict[str, np.ndarray]) -> Selection:
        """The reduce half: group equal hashes, keep each group's first row."""
        hashes = features["hashes"]
        if len(hashes) == 0:
            return Selection.keep_all(0)
        return self.select_from_labels(ds, ctx, first_occurrence(hashes), {})

    def distributed_reduce(self) -> DuplicateGroups:
        """Hash-partitionable: equal hashes meet on one worker, where the first row wins."""
        return DuplicateGroups(key="hashes", first_of_group=first_occurrence)

    def select_from_labels(self, ds: Dataset, ctx: StepContext, labels: np.ndarray,
                           stats: dict) -> Selection:
        """Rows whose label is another row are copies of it, removed naming its id."""
        rep = labels
        n = len(rep)
        if n == 0:
            return Selection.keep_all(0)
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
