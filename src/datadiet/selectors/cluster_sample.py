"""Stratified sampling over k-means clusters of the rows' embeddings.
A random subset of an instruction set mirrors its skew: if 40% of the rows are one task, 40% of
the budget goes to it. Clustering the embeddings (spherical k-means, faiss) and sampling across
clusters spreads the budget over the kinds of rows there are — proportionally (each cluster keeps
its share, but every cluster is represented by its rounding) or balanced (every cluster gets an
equal share, small clusters kept whole and their leftover passed on), the latter being the
coverage-first choice of cluster-based SFT selection methods. Inside a cluster, rows are drawn at
random, or by a score column (``score=judge_score``) to take each cluster's best rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep
from datadiet.selectors.deita import score_values
from datadiet.selectors.semdedup import (
    assign_clusters,
    embedding_features,
    fit_kmeans,
    resolve_n_clusters,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["ClusterSample", "allocate"]

NOT_SAMPLED = "cluster_sample:not-sampled"


def allocate(sizes: np.ndarray, k: int, strategy: str = "proportional") -> np.ndarray:
    """How many rows each cluster keeps, summing to ``min(k, sizes.sum())``.

    ``proportional``: largest-remainder rounding of ``k · size / n`` (ties to the larger
    cluster). ``balanced``: water-filling — equal shares, a cluster smaller than its share kept
    whole and the rest shared again among the others.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k = int(min(k, sizes.sum()))
    if k == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    if strategy == "proportional":
        exact = k * sizes / sizes.sum()
        take = np.floor(exact).astype(np.int64)
        order = np.lexsort((-sizes, -(exact - take)))
        take[order[: k - int(take.sum())]] += 1
        return take
    if strategy == "balanced":
        take = np.zeros(len(sizes), dtype=np.int64)
        left = k
        while left > 0:
            open_ = np.flatnonzero(take < sizes)
            share = left // len(open_)
            if share == 0:  # fewer rows left than open clusters: largest clusters first
                order = open_[np.argsort(-(sizes[open_] - take[open_]), kind="stable")]
                take[order[:left]] += 1
                break
            add = np.minimum(share, sizes[open_] - take[open_])
            take[open_] += add
            left -= int(add.sum())
        return take
    raise ValueError(f"strategy must be 'proportional' or 'balanced', got {strategy!r}")


@register_step
class ClusterSample(Step):
    """Keep ``keep`` rows spread across k-means clusters of their embeddings.

    Args:
        keep: rows to keep (a fraction of the step's input rows, or a count).
        n_clusters: ``"auto"`` (``sqrt(n)``) or a number of clusters.
        strategy: ``"proportional"`` or ``"balanced"`` (see the module docstring).
        score: a numeric column; when given, each cluster keeps its highest-scoring rows
            instead of random ones.
        seed: k-means initialisation and the draw inside clusters.
        kmeans_iters: Lloyd iterations.

    Removed rows: ``cluster_sample:not-sampled:<cluster>``. Scores: none (the stats give each
    cluster's size and how many rows it kept).
    """

    name = "cluster_sample"
    maps_survivors = True  # a model reads every row it maps

    def __init__(self, *, keep: float | int = 0.1, n_clusters: int | str = "auto",
                 strategy: str = "balanced", score: str | None = None, seed: int = 0,
                 kmeans_iters: int = 20) -> None:
        validate_keep(keep)
        if n_clusters != "auto" and (isinstance(n_clusters, bool) or not isinstance(n_clusters, int)
                                     or n_clusters < 1):
            raise ValueError(f"n_clusters must be 'auto' or an int >= 1, got {n_clusters!r}")
        if strategy not in ("proportional", "balanced"):
            raise ValueError(f"strategy must be 'proportional' or 'balanced', got {strategy!r}")
        if score is not None and (not isinstance(score, str) or not score):
            raise ValueError(f"score must name a numeric column, got {score!r}")
        self.keep = keep
        self.n_clusters = n_clusters
        self.strategy = strategy
        self.score = score
        self.seed = int(seed)
        self.kmeans_iters = int(kmeans_iters)

    def reads_columns(self) -> list[str]:
        return [self.score] if self.score is not None else []

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        return embedding_features(batch, view)

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        """k-means over the live rows' embeddings (gathered here), then the draw per cluster;
        ``ds`` holds the ids and the ``score`` column, when one ranks the draw."""
        emb = features["embedding"]
        n = len(emb)
        k = resolve_keep(self.keep, n)
        if k >= n:
            return Selection.keep_all(n)
        values = None if self.score is None else score_values(ds, self.score, self.name)
        n_clusters = resolve_n_clusters(self.n_clusters, n)
        centroids = fit_kmeans(emb, n_clusters, iters=self.kmeans_iters, seed=self.seed)
        labels, _ = assign_clusters(emb, centroids)
        sizes = np.bincount(labels, minlength=len(centroids))
        take = allocate(sizes, k, self.strategy)
        rng = np.random.default_rng(self.seed)
        if values is not None:
            values = np.nan_to_num(values, nan=-np.inf)
            priority = np.argsort(np.argsort(-values, kind="stable"), kind="stable")
        else:
            priority = rng.permutation(n)
        keep = np.zeros(n, dtype=bool)
        by_cluster = np.lexsort((priority, labels))  # rows grouped by cluster, best first
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for c in np.flatnonzero(take):
            keep[by_cluster[bounds[c] : bounds[c] + take[c]]] = True
        detail = np.asarray([str(c) for c in labels.tolist()], dtype=object)
        stats = {"k": int(k), "n_clusters": int(len(centroids)), "strategy": self.strategy,
                 "cluster_sizes": sizes.tolist(), "cluster_kept": take.tolist(),
                 "clusters_represented": int((take > 0).sum())}
        return Selection.from_mask(keep, NOT_SAMPLED, detail=detail, stats=stats)
