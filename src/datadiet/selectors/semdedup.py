"""SemDeDup: remove semantic near-duplicates with k-means plus within-cluster cosine similarity.
Following Abbas et al. 2023 ("SemDeDup: Data-efficient learning at web-scale through semantic
deduplication"): embed every document, cluster the embeddings with k-means, and compare documents
only *within* a cluster. Two documents whose cosine similarity exceeds ``1 - epsilon`` are
semantic duplicates; from each group of duplicates one document is kept.

Why clusters: all-pairs similarity is quadratic in the corpus, within-cluster similarity is
quadratic only in the cluster size (about ``sqrt(n)`` members with the default ``n_clusters``),
and near-duplicates almost always land in the same cluster because they are close in the very
space k-means partitions. The price is that a duplicate pair split across two clusters is missed;
the paper accepts that, and so do we.

Which member is kept: the one **farthest from its cluster centroid**, as the paper and its
reference code do (the reference's ``keep_hard`` default, which NeMo Curator follows too): the
least prototypical member of a duplicate group is the one that adds the most to the rest of the
cluster. ``keep="nearest"`` keeps the most central member instead, as an ablation.

What a "duplicate group" is here: a connected component of the graph whose edges are the pairs
above the threshold (within one cluster). The reference code instead removes every document that
has a neighbour above the threshold earlier in its keep order, whether or not that neighbour
survives. The
component rule is the one that gives every removed row a *kept* document to point to (the
``semantic-duplicate-of:<id>`` detail), at the cost of chaining: with a small threshold, a chain
``a ~ b ~ c`` folds ``c`` into ``a`` even if ``a`` and ``c`` are not themselves above it. Keep
``epsilon`` small (the paper uses values around 0.01–0.3 depending on the embedding model) and
chaining stays rare.

Past one machine: the per-cluster work is the pure function :func:`cluster_duplicates`, so a Dask
map over clusters (after a k-means fitted on a sample, :func:`fit_kmeans`, and a map over shards
for :func:`assign_clusters`) runs exactly this code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import row_ids

if TYPE_CHECKING:
    from datasets import Dataset

_KEEP_RULES = ("farthest", "nearest")


# -- embeddings -----------------------------------------------------------------------------


def embedding_features(batch: pa.RecordBatch | pa.Table, view: RecordView) -> dict[str, Any]:
    """The map of the embedding steps: each row's L2-normalised embedding (``(n, dim)``
    float32) from the process's one embedder (loaded once per process, its content-hash cache
    shared by every process of the machine)."""
    if batch.num_rows == 0:
        return {"embedding": np.empty((0, 0), np.float32)}
    texts = ["" if t is None else t for t in view.texts(batch).to_pylist()]
    with view.embedder() as embedder:
        return {"embedding": embedder.encode(texts)}


# -- k-means ---------------------------------------------------------------------------------


def resolve_n_clusters(n_clusters: int | str, n_rows: int) -> int:
    """``"auto"`` is ``round(sqrt(n))``: clusters and cluster sizes both grow like ``sqrt(n)``,
    which balances k-means cost (``n·k``) against within-cluster cost (``n·n/k``)."""
    if n_rows <= 0:
        return 0
    k = max(1, round(math.sqrt(n_rows))) if n_clusters == "auto" else int(n_clusters)
    return max(1, min(k, n_rows))


def fit_kmeans(
    emb: np.ndarray,
    n_clusters: int,
    *,
    iters: int = 20,
    seed: int = 0,
    sample: int | None = None,
) -> np.ndarray:
    """Fit spherical k-means (faiss) and return the ``(k, dim)`` unit-norm centroids.

    ``sample`` rows (drawn with ``seed``) are used for fitting; ``None`` means all rows up to
    ``256·k``, faiss's own rule of thumb — more points per centroid barely move the centroids,
    and a sample is what makes the fit a small global step before a map over all shards.
    Spherical k-means because the embeddings are unit vectors compared by cosine.
    """
    import faiss

    n, dim = emb.shape
    k = max(1, min(int(n_clusters), n))
    size = min(n, 256 * k) if sample is None else max(k, min(int(sample), n))
    if size < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        train = np.ascontiguousarray(emb[rows], dtype=np.float32)
    else:
        train = np.ascontiguousarray(emb, dtype=np.float32)
    km = faiss.Kmeans(
        dim,
        k,
        niter=int(iters),
        seed=int(seed),
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small corpora are fine; do not print faiss's warning
        max_points_per_centroid=max(size // k + 1, 1),  # we sampled already; faiss must not
    )
    km.train(train)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, dim)


def assign_clusters(
    emb: np.ndarray, centroids: np.ndarray, batch_rows: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row, in row blocks (works on a memmap).

    Returns ``(labels, cos)``: the cluster of each row and its cosine similarity to that
    centroid (the "nearness" that decides which duplicate is kept).
    """
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    n = emb.shape[0]
    labels = np.empty(n, dtype=np.int64)
    cos = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_rows):
        block = np.ascontiguousarray(emb[start : start + batch_rows], dtype=np.float32)
        sim, lab = index.search(block, 1)
        labels[start : start + len(block)] = lab[:, 0]
        cos[start : start + len(block)] = sim[:, 0]
    return labels, cos


# -- the per-cluster work (pure: a Dask map over clusters reuses it) --------------------------


def cluster_duplicates(
    emb: np.ndarray,
    centroid: np.ndarray,
    threshold: float,
    keep: str = "farthest",
    block_rows: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Find the semantic-duplicate groups of one cluster and the member each group keeps.

    Args:
        emb: ``(m, dim)`` unit-norm embeddings of the cluster's members.
        centroid: the cluster's centroid (any norm; only the ordering of ``emb @ centroid``
            matters, which is the same as ordering by Euclidean or cosine distance).
        threshold: pairs with cosine similarity strictly above it are duplicates
            (``1 - epsilon``).
        keep: ``"farthest"`` (the paper's rule) keeps the member farthest from the centroid,
            ``"nearest"`` the one nearest it; ties go to the lower row.
        block_rows: rows of the similarity matrix computed at a time — memory is
            ``block_rows·m`` floats, never ``m·m``.

    Returns:
        ``(rep, max_sim)``: for each member the local index of the member its group keeps
        (``rep[i] == i`` for kept members), and each member's highest similarity to any other
        member (``-inf`` for a cluster of one).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if keep not in _KEEP_RULES:
        raise ValueError(f"keep must be one of {_KEEP_RULES}, got {keep!r}")
    emb = np.asarray(emb, dtype=np.float32)
    m = emb.shape[0]
    max_sim = np.full(m, -np.inf, dtype=np.float32)
    if m < 2:
        return np.arange(m, dtype=np.int64), max_sim
    heads: list[np.ndarray] = []
    tails: list[np.ndarray] = []
    for start in range(0, m, block_rows):
        sims = emb[start : start + block_rows] @ emb.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # a document is not its own duplicate
        max_sim[start : start + len(rows)] = sims.max(axis=1)
        i, j = np.nonzero(sims > threshold)
        i += start
        upper = j > i  # each pair once
        heads.append(i[upper])
        tails.append(j[upper])
    i, j = np.concatenate(heads), np.concatenate(tails)
    if len(i) == 0:
        return np.arange(m, dtype=np.int64), max_sim
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(m, m))
    _, component = connected_components(graph, directed=False)
    closeness = emb @ np.asarray(centroid, dtype=np.float32)
    primary = -closeness if keep == "nearest" else closeness
    order = np.lexsort((np.arange(m), primary))  # the keep rule's favourite first, then lowest row
    comps_in_order = component[order]
    _, first = np.unique(comps_in_order, return_index=True)
    keeper_of_component = np.empty(component.max() + 1, dtype=np.int64)
    keeper_of_component[comps_in_order[first]] = order[first]
    return keeper_of_component[component], max_sim


@dataclass
class SemDedupResult:
    """Outcome of :func:`semdedup_embeddings` over a whole corpus (global row indices)."""

    rep: np.ndarray  # row kept for each row's duplicate group (rep[i] == i: kept)
    max_sim: np.ndarray  # highest similarity to another member of the same cluster
    labels: np.ndarray  # cluster of each row
    centroids: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def keep(self) -> np.ndarray:
        return self.rep == np.arange(len(self.rep))


def semdedup_embeddings(
    emb: np.ndarray,
    *,
    n_clusters: int | str = "auto",
    epsilon: float = 0.1,
    kmeans_iters: int = 20,
    seed: int = 0,
    sample: int | None = None,
    keep: str = "farthest",
    progress: Callable[[int], Any] | None = None,
) -> SemDedupResult:
    """SemDeDup on an embedding matrix (in RAM or a memmap): k-means, then per-cluster groups.

    ``progress`` (optional) is called with the number of rows done after each cluster.
    """
    n = emb.shape[0]
    k = resolve_n_clusters(n_clusters, n)
    threshold = 1.0 - float(epsilon)
    rep = np.arange(n, dtype=np.int64)
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    if n < 2:  # nothing to compare (and k-means needs at least one point per centroid)
        labels = np.zeros(n, dtype=np.int64)
        centroids = np.asarray(emb, dtype=np.float32).reshape(n, -1)[:k].copy()
        stats = {"clusters": k, "epsilon": float(epsilon), "threshold": threshold, "removed": 0}
        return SemDedupResult(rep, max_sim, labels, centroids, stats)
    centroids = fit_kmeans(emb, k, iters=kmeans_iters, seed=seed, sample=sample)
    labels, _ = assign_clusters(emb, centroids)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=k)
    groups = 0
    for c, members in enumerate(np.split(order, np.cumsum(sizes)[:-1])):
        if len(members) >= 2:
            local_rep, local_max = cluster_duplicates(emb[members], centroids[c], threshold, keep)
            rep[members] = members[local_rep]
            max_sim[members] = local_max
            groups += int(np.count_nonzero(np.bincount(local_rep) >= 2))
        if progress is not None:
            progress(len(members))
    removed = int(n - np.count_nonzero(rep == np.arange(n)))
    stats = {
        "clusters": int(k),
        "epsilon": float(epsilon),
        "threshold": threshold,
        "removed": removed,
        "duplicate_groups": groups,
        "largest_cluster": int(sizes.max()),
        "keep": keep,
    }
    return SemDedupResult(rep, max_sim, labels, centroids, stats)


# -- the step ----------------------------------------------------------------------------------


@register_step
class SemanticDedup(Step):
    """Semantic deduplication (SemDeDup, Abbas et al. 2023); see the module docstring.

    Args:
        epsilon: documents whose cosine similarity exceeds ``1 - epsilon`` are duplicates. The
            default 0.1 (similarity > 0.9) suits all-MiniLM-L6-v2: the same input under two
            instruction templates scores about 0.93–0.99, distinct encyclopedia paragraphs rarely
            above 0.9. Tune it per embedder and corpus.
        n_clusters: k-means clusters, or ``"auto"`` for ``round(sqrt(n))``.
        kmeans_iters: Lloyd iterations.
        seed: seeds k-means initialisation and the fitting sample.
        sample: rows to fit k-means on (``None``: all rows up to ``256·k``); every row is then
            assigned to its nearest centroid.
        keep: ``"farthest"`` (default: keep the member farthest from its cluster centroid, as
            the paper and its reference code do) or ``"nearest"`` (the most central member, an
            ablation).

    Removed rows get kind ``"semantic-duplicate-of"`` with the kept document's id as detail.
    Scores are ``1 - (highest cosine similarity to another member of the row's cluster)``: how
    far a row is from its nearest neighbour, higher meaning more distinct (NaN for a cluster of
    one, where nothing was compared).
    """

    name = "semantic_dedup"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True

    def __init__(
        self,
        *,
        epsilon: float = 0.1,
        n_clusters: int | str = "auto",
        kmeans_iters: int = 20,
        seed: int = 0,
        sample: int | None = None,
        keep: str = "farthest",
    ) -> None:
        if not 0.0 <= float(epsilon) < 2.0:
            raise ValueError(f"epsilon must be in [0, 2), got {epsilon!r}")
        if n_clusters != "auto" and (isinstance(n_clusters, bool) or int(n_clusters) < 1):
            raise ValueError(f"n_clusters must be 'auto' or a positive int, got {n_clusters!r}")
        if keep not in _KEEP_RULES:
            raise ValueError(f"keep must be one of {_KEEP_RULES}, got {keep!r}")
        if sample is not None and int(sample) < 1:
            raise ValueError(f"sample must be a positive int or None, got {sample!r}")
        self.epsilon = float(epsilon)
        self.n_clusters = n_clusters
        self.kmeans_iters = int(kmeans_iters)
        self.seed = int(seed)
        self.sample = sample
        self.keep = keep

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        return embedding_features(batch, view)

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        """SemDeDup over the live rows' embeddings, gathered here (memory-mapped past
        ``SPILL_BYTES`` by the in-process executor)."""
        emb = features["embedding"]
        n = len(emb)
        if n == 0:
            return Selection.keep_all(0)
        with ctx.progress(n, "semdedup: clusters") as bar:
            result = semdedup_embeddings(
                emb,
                n_clusters=self.n_clusters,
                epsilon=self.epsilon,
                kmeans_iters=self.kmeans_iters,
                seed=self.seed,
                sample=self.sample,
                keep=self.keep,
                progress=bar.update,
            )
        keep = result.keep
        detail = np.full(n, "", dtype=object)
        removed = np.flatnonzero(~keep)
        detail[removed] = row_ids(ds, ctx.id_field, result.rep[removed])
        scores = np.where(np.isfinite(result.max_sim), 1.0 - result.max_sim, np.nan)
        return Selection.from_mask(
            keep, "semantic-duplicate-of", detail=detail, scores=scores, stats=result.stats
        )
