"""Greedy k-center coreset (Sener & Savarese 2018) on document embeddings.
Keep ``k`` documents such that every document is close to some kept one: repeatedly add the
document farthest from everything chosen so far. The greedy rule is a 2-approximation of the
optimal covering radius (Gonzalez 1985), and in practice it picks a diverse, outlier-aware subset —
the point of a coreset: train on ``k`` rows that still "cover" the corpus.

Why it is cheap enough: the algorithm only needs, for each row, its distance to the *nearest*
chosen center. That running minimum (one float per row) is updated with one matrix-vector
product per pick, so the cost is ``O(n·k·dim)`` time and ``O(n)`` extra memory — never an
``n×n`` distance matrix. Rows are read in blocks, so the embeddings may be a memmap.

Distances are Euclidean; the shared embedder returns unit vectors, for which Euclidean distance
is a monotone function of cosine distance (``|x - c|² = 2 - 2·cos``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep
from datadiet.selectors.semdedup import embedding_features

if TYPE_CHECKING:
    from datasets import Dataset


def greedy_k_center(
    emb: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    first: int | None = None,
    block_rows: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick ``k`` rows of ``emb`` by the greedy farthest-point rule.

    Args:
        emb: ``(n, dim)`` embeddings (an array or a memmap; read in ``block_rows`` blocks).
        k: number of centers, ``1 <= k <= n``.
        seed: picks the first center uniformly at random when ``first`` is not given — the
            only random choice; everything after it is deterministic (ties: lowest row).
        first: the first center's row, to override the seeded choice.

    Returns:
        ``(centers, pick_dist, cover_dist)``: the rows in the order they were picked; for each,
        its distance to the nearest earlier center when it was picked (``inf`` for the first,
        which had none; non-increasing after that); and for every row its final distance to
        the nearest center (0 for centers) — whose maximum is the covering radius.
    """
    n = emb.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if first is None:
        first = int(np.random.default_rng(seed).integers(n))
    sq_norm = np.empty(n, dtype=np.float32)
    for start in range(0, n, block_rows):
        block = np.asarray(emb[start : start + block_rows], dtype=np.float32)
        sq_norm[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    min_d2 = np.full(n, np.inf, dtype=np.float32)  # running squared distance to nearest center
    centers = np.empty(k, dtype=np.int64)
    pick_dist = np.empty(k, dtype=np.float64)
    pick = int(first)
    for t in range(k):
        centers[t] = pick
        pick_dist[t] = math.sqrt(max(float(min_d2[pick]), 0.0))
        center = np.asarray(emb[pick], dtype=np.float32)
        for start in range(0, n, block_rows):
            block = np.asarray(emb[start : start + block_rows], dtype=np.float32)
            d2 = sq_norm[start : start + len(block)] + sq_norm[pick] - 2.0 * (block @ center)
            np.minimum(min_d2[start : start + len(block)], d2, out=min_d2[start : start + len(block)])
        min_d2[pick] = -np.inf  # never picked again, even when the rest are exact duplicates
        pick = int(np.argmax(min_d2))
    min_d2[centers] = 0.0
    cover_dist = np.sqrt(np.maximum(min_d2, 0.0)).astype(np.float64)
    return centers, pick_dist, cover_dist


@register_step
class KCenterCoreset(Step):
    """Keep a greedy k-center coreset of the documents' embeddings.

    Args:
        keep: a fraction of rows (float in (0, 1]) or a number of rows (int) to keep.
        seed: chooses the first center; the rest of the selection is deterministic.

    Removed rows get kind ``"kcenter:not-selected"``. Scores are distances, higher meaning
    "covers more that nothing else covers": for a selected row, its distance to the nearest
    already-selected center at the moment it was picked (``inf`` for the first center), and for
    a row not selected, its final distance to the nearest selected center. Because greedy pick
    distances never increase and every final distance is at most the last pick's, sorting by
    score reproduces the selection (and the pick order), so a smaller budget is a prefix.
    """

    name = "kcenter"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True

    def __init__(self, *, keep: float | int = 0.1, seed: int = 0) -> None:
        validate_keep(keep)
        if keep == 0:
            raise ValueError("kcenter needs keep > 0: a coreset of no points covers nothing")  # validate early, in the spec, not halfway through a run
        self.keep = keep
        self.seed = int(seed)

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        return embedding_features(batch, view)

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        """The greedy coreset over the live rows' embeddings, gathered here."""
        emb = features["embedding"]
        n = len(emb)
        k = resolve_keep(self.keep, n)
        if n == 0 or k >= n:
            return Selection.keep_all(n, scores=np.full(n, np.nan))
        centers, pick_dist, cover_dist = greedy_k_center(emb, k, seed=self.seed)
        scores = cover_dist.copy()
        scores[centers] = pick_dist
        keep = np.zeros(n, dtype=bool)
        keep[centers] = True
        stats = {
            "k": int(k),
            "radius": float(cover_dist.max()),
            "mean_distance": float(cover_dist.mean()),
            "last_pick_distance": float(pick_dist[-1]) if k > 1 else None,
        }
        return Selection.from_mask(keep, "kcenter:not-selected", scores=scores, stats=stats)
