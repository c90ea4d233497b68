"""Score-first, diversity-aware selection (DEITA, Liu et al. 2023, "What Makes Good Data for
Alignment?").

Walk the rows from the best score down and take a row only if its embedding's cosine similarity to
every row already taken is at most ``threshold`` (DEITA's 0.9), until ``keep`` rows are taken. The
score is any numeric column: an earlier step's score (``ifd_score``, ``judge_score``) or one that
came with the data. High-scoring near-copies therefore cost one slot, not many, which is the point:
the budget goes to good rows that are also different from each other.

Why it is fast: the walk is in blocks of candidates. One faiss inner-product search per block
finds each candidate's nearest taken row (on unit vectors, inner product is cosine); candidates
that pass are then checked against each other inside the block with one small similarity
matrix, in score order, so the work is ``O(n·k·dim)`` in BLAS, with no Python loop over pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, row_ids, validate_keep
from datadiet.selectors.semdedup import embedding_features

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["Deita", "diverse_by_score"]

TOO_SIMILAR = "deita:too-similar-to"
BELOW_BUDGET = "deita:below-budget"
NO_SCORE = "deita:no-score"


def diverse_by_score(
    emb: np.ndarray, order: np.ndarray, k: int, threshold: float = 0.9, block: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Greedy DEITA walk over ``order`` (row indices, best first) on unit-norm ``emb``.

    Returns ``(taken, nearest, similarity, examined)``: the taken rows in the order taken; for
    every row examined, the taken row it was most similar to when examined (``-1`` for none)
    and that cosine similarity (``NaN`` for rows never examined); and how many rows of
    ``order`` were examined before ``k`` were taken (or all of them).
    """
    import faiss

    n, dim = emb.shape
    nearest = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    taken: list[int] = []
    index = faiss.IndexFlatIP(dim)
    examined = 0
    while examined < len(order) and len(taken) < k:
        rows = order[examined : examined + block]
        vecs = np.ascontiguousarray(emb[rows], dtype=np.float32)
        if taken:
            sim, idx = index.search(vecs, 1)
            best_sim = sim[:, 0]
            best_row = np.asarray(taken, dtype=np.int64)[idx[:, 0]]
        else:
            best_sim = np.full(len(rows), -np.inf, dtype=np.float32)
            best_row = np.full(len(rows), -1, dtype=np.int64)
        inner = vecs @ vecs.T  # candidates against each other, in score order
        accepted: list[int] = []  # positions in this block
        stop = len(rows)
        for j in range(len(rows)):
            if accepted:
                sims = inner[j, accepted]
                m = int(np.argmax(sims))
                if sims[m] > best_sim[j]:
                    best_sim[j], best_row[j] = sims[m], rows[accepted[m]]
            if best_sim[j] <= threshold:
                accepted.append(j)
                if len(taken) + len(accepted) == k:
                    stop = j + 1
                    break
        done = rows[:stop]
        similarity[done] = best_sim[:stop]
        nearest[done] = best_row[:stop]
        if accepted:
            index.add(vecs[accepted])
            taken.extend(int(rows[j]) for j in accepted)
        examined += stop
    similarity[np.isinf(similarity)] = np.nan  # the very first row taken had nothing to match
    return np.asarray(taken, dtype=np.int64), nearest, similarity, examined


@register_step
class Deita(Step):
    """Take the best-scoring rows that are not near-copies of rows already taken.

    Args:
        keep: rows to take (a fraction of the step's input rows, or a count).
        score: the numeric column to rank by, e.g. ``ifd_score`` from an earlier ``ifd`` step.
        descending: ``True`` takes high scores first (IFD, judge); ``False`` low first.
        threshold: the largest cosine similarity to a taken row that still lets a row in.

    Removed rows: ``deita:too-similar-to:<id>`` (the taken row it resembles),
    ``deita:below-budget`` (not reached once the budget was met), ``deita:no-score``. Scores:
    each examined row's cosine similarity to its nearest taken row (lower is more novel).
    """

    name = "deita"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True

    def __init__(self, *, keep: float | int = 0.1, score: str = "ifd_score",
                 descending: bool = True, threshold: float = 0.9) -> None:
        validate_keep(keep)
        if not isinstance(score, str) or not score:
            raise ValueError(f"score must name a numeric column, got {score!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold!r}")
        self.keep = keep
        self.score = score
        self.descending = bool(descending)
        self.threshold = float(threshold)

    def reads_columns(self) -> list[str]:
        return [self.score]

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        return embedding_features(batch, view)

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        """Score order, then novelty against the rows taken: ``ds`` holds the live rows'
        score column (an earlier step's, or the input's), the embeddings are gathered here."""
        values = score_values(ds, self.score, self.name)
        n = len(values)
        k = resolve_keep(self.keep, n)
        valid = np.flatnonzero(~np.isnan(values))  # inf is a score (k-center's first pick)
        key = -values[valid] if self.descending else values[valid]
        order = valid[np.argsort(key, kind="stable")]
        emb = features["embedding"]
        taken, nearest, similarity, examined = diverse_by_score(emb, order, k, self.threshold)
        kinds = np.full(n, BELOW_BUDGET, dtype=object)
        kinds[np.isnan(values)] = NO_SCORE
        kinds[order[:examined]] = TOO_SIMILAR
        kinds[taken] = ""
        detail = np.full(n, "", dtype=object)
        similar = np.flatnonzero(kinds == TOO_SIMILAR)
        detail[similar] = row_ids(ds, ctx.id_field, nearest[similar])
        stats = {"k": int(k), "taken": int(len(taken)), "examined": int(examined),
                 "budget_met": bool(len(taken) == k), "threshold": self.threshold,
                 "score": self.score}
        return Selection.from_mask(kinds == "", kinds, detail, scores=similarity.astype(np.float64),
                                   stats=stats)


def score_values(ds: Dataset | pa.Table, column: str, step: str) -> np.ndarray:
    """A numeric column of the live rows as float64 (a ``Dataset``'s, or the table the
    runner hands a reduce: the ids and the score columns the step reads)."""
    if column not in ds.column_names:
        scored = [c for c in ds.column_names if c.endswith("_score")]
        hint = f" (score columns here: {', '.join(scored)})" if scored else \
            " (run a scoring step such as ifd or judge first)"
        raise ValueError(f"{step}: no column {column!r}{hint}")
    try:
        return np.asarray(ds[column], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{step}: column {column!r} is not numeric ({exc})") from exc
