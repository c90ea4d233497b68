"""Choosing demonstrations for a query from a labelled pool.

``DemoSelector(strategy, k).fit(texts, labels)`` once, then ``select(query)`` per query. Every
strategy is "candidates, then a greedy pick": a strategy ranks pool rows for the query (or, for
MMR and DPP, scores a whole set), and one greedy loop applies the constraints that any strategy
can be asked for -- ``balanced`` label counts, a ``max_tokens`` budget, and never showing the query
itself as its own demonstration. Keeping the constraints in one loop is what lets ``balanced``
and ``max_tokens`` mean the same thing for every strategy.

Strategies:
    random  a uniform draw per query (seeded by the query text, so it is reproducible).
    bm25    lexical overlap, Okapi BM25 (the ``bm25s`` library).
    knn     KATE (Liu et al. 2022): nearest neighbours by sentence embedding, a faiss index.
    mmr     maximal marginal relevance: ``lambda * sim(q, d) - (1 - lambda) * max sim(d, chosen)``.
    votek   Vote-k (Su et al. 2022): graph voting picks a diverse, representative sub-pool once
            at fit time; each query then gets its nearest neighbours inside it.
    dpp     a determinantal point process over the query's top candidates with the
            relevance-weighted kernel ``L = diag(r) S diag(r)`` (``S`` cosine similarities,
            ``r = exp(alpha * sim(q, d))``), decoded by greedy MAP inference (Chen et al. 2018).
            Why greedy MAP rather than sampling a DPP (as OpenICL's retriever does): a demonstration
            set should be the *most* relevant-and-diverse set, not a random draw from the
            distribution -- at k = 4 out of ~50 candidates a sample varies a lot from call to call,
            which adds variance to accuracy and makes a prompt irreproducible (and uncacheable).
            Greedy MAP is deterministic, costs O(N k^2) with incremental Cholesky updates, and
            can never pick a duplicate: a copy of a chosen row adds nothing to the determinant.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datadiet.pipeline.io import SpecError
from datadiet.prompting.demos.templates import PromptTemplate

STRATEGIES = ("random", "bm25", "knn", "mmr", "votek", "dpp")
EMBEDDING_STRATEGIES = ("knn", "mmr", "votek", "dpp")


@dataclass(frozen=True)
class Demo:
    """One pool row chosen as a demonstration; ``score`` is its relevance to the query."""

    index: int
    text: str
    label: str
    score: float = math.nan


def query_seed(seed: int, query: str) -> int:
    """A per-query seed: the same query gets the same draw in every run and every batch."""
    return (seed * 1_000_003 + zlib.crc32(query.encode("utf-8", "surrogatepass"))) % (2**32)


class DemoSelector:
    """Pick ``k`` demonstrations per query from a labelled pool.

    Args:
        strategy: one of ``random``, ``bm25``, ``knn``, ``mmr``, ``votek``, ``dpp``.
        k: demonstrations per query (with ``max_tokens``: at most this many; ``None`` = no cap).
        balanced: keep the label mix even -- a label is eligible only while its count equals the
            lowest count among the labels present, so counts never differ by more than one.
        max_tokens: as many demonstrations as fit this many tokens, counted as they appear in
            the prompt (``template.format_demo`` plus the separator) by ``count_tokens``.
        template / count_tokens: how a demonstration is written and counted for ``max_tokens``
            (default: the default template and SmolLM2's tokenizer).
        embedder: the one :class:`~datadiet.pipeline.models.embedding.Embedder` (default one is
            built when an embedding strategy needs it).
        mmr_lambda: MMR's relevance weight (1 = pure kNN, 0 = pure diversity).
        dpp_alpha: DPP relevance sharpness, ``r = exp(alpha * similarity)``.
        candidates: how many nearest rows MMR and DPP choose from (and the search depth of the
            ranking strategies when constraints skip rows).
        votek_size: size of Vote-k's sub-pool (default ``max(10 k, 50)``, capped by the pool);
            votek_neighbors: out-degree of its kNN graph; votek_rho: its discount base (10 in
            the paper: each already-chosen neighbour divides a vote by rho).
        exclude_query: never show a pool row whose text equals the query.
        seed: for ``random`` (and nothing else).
    """

    def __init__(
        self,
        strategy: str = "knn",
        k: int | None = 4,
        *,
        balanced: bool = False,
        max_tokens: int | None = None,
        template: PromptTemplate | None = None,
        count_tokens: Callable[[str], int] | None = None,
        embedder: Any = None,
        mmr_lambda: float = 0.5,
        dpp_alpha: float = 3.0,
        candidates: int = 50,
        votek_size: int | None = None,
        votek_neighbors: int = 15,
        votek_rho: float = 10.0,
        exclude_query: bool = True,
        seed: int = 0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise SpecError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if k is None and max_tokens is None:
            raise SpecError("give k, max_tokens, or both")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0):
            raise SpecError(f"k must be a non-negative integer, got {k!r}")
        if max_tokens is not None and max_tokens < 1:
            raise SpecError(f"max_tokens must be at least 1, got {max_tokens}")
        if not 0.0 <= mmr_lambda <= 1.0:
            raise SpecError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        if candidates < 1 or votek_neighbors < 1 or votek_rho <= 1.0:
            raise SpecError("candidates and votek_neighbors must be >= 1 and votek_rho > 1")
        self.strategy = strategy
        self.k = None if k is None else int(k)
        self.balanced = balanced
        self.max_tokens = max_tokens
        self.template = template or PromptTemplate()
        self.count_tokens = count_tokens
        self.embedder = embedder
        self.mmr_lambda = mmr_lambda
        self.dpp_alpha = dpp_alpha
        self.candidates = candidates
        self.votek_size = votek_size
        self.votek_neighbors = votek_neighbors
        self.votek_rho = votek_rho
        self.exclude_query = exclude_query
        self.seed = seed
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.vectors: np.ndarray | None = None
        self.subpool: np.ndarray | None = None  # Vote-k's chosen rows
        self._fitted = False

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, texts: Sequence[str], labels: Sequence[Any]) -> DemoSelector:
        """Index the pool (embeddings, BM25, Vote-k's sub-pool); returns ``self``."""
        texts, labels = list(texts), [str(x) for x in labels]
        if len(texts) != len(labels):
            raise SpecError(f"fit: {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise SpecError("the demonstration pool is empty")
        if self.k is not None and self.k > len(texts):
            raise SpecError(f"k={self.k} is larger than the pool ({len(texts)} examples)")
        self.texts, self.labels = texts, labels
        self._label_array = np.asarray(labels, dtype=object)
        self.label_values = sorted(set(labels))
        self._by_label = {y: np.flatnonzero(self._label_array == y) for y in self.label_values}
        self._text_index: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            self._text_index.setdefault(t, []).append(i)
        self._costs: dict[int, int] = {}
        if self.strategy in EMBEDDING_STRATEGIES:
            if self.embedder is None:
                from datadiet.pipeline.models.embedding import Embedder

                self.embedder = Embedder()
            self.vectors = np.ascontiguousarray(self.embedder.encode(texts), dtype=np.float32)
        if self.strategy == "bm25":
            self._fit_bm25(texts)
        if self.strategy == "votek":
            self.subpool = self._vote_k()
        if self.strategy in ("knn", "mmr", "dpp", "votek"):
            rows = self.subpool if self.subpool is not None else np.arange(len(texts))
            self._index = _Index(self.vectors[rows], rows, self._label_array[rows])  # type: ignore[index]
        self._fitted = True
        return self

    def _fit_bm25(self, texts: list[str]) -> None:
        try:
            import bm25s
        except ImportError:  # an optional extra: say what to install
            raise ImportError("strategy 'bm25' needs the bm25s package: "
                              "pip install 'datadiet[icl]'") from None

        self._bm25 = bm25s.BM25()
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        self._bm25_vocab = tokens.vocab
        self._bm25.index(tokens, show_progress=False)

    def _vote_k(self) -> np.ndarray:
        """Vote-k's sub-pool; with ``balanced``, voted within each label's own graph."""
        n = len(self.texts)
        size = self.votek_size or max(10 * (self.k or 4), 50)
        size = min(size, n)
        if not self.balanced:
            return vote_k(self.vectors, size, self.votek_neighbors, self.votek_rho)  # type: ignore[arg-type]
        chosen = []
        groups = list(self._by_label.values())
        for g, rows in enumerate(groups):
            share = size // len(groups) + (1 if g < size % len(groups) else 0)
            picked = vote_k(self.vectors[rows], min(max(share, 1), len(rows)),  # type: ignore[index]
                            self.votek_neighbors, self.votek_rho)
            chosen.append(rows[picked])
        return np.sort(np.concatenate(chosen))

    # -- selecting ---------------------------------------------------------------------------

    def select(self, query: str) -> list[Demo]:
        """The demonstrations for ``query``, most relevant first (the strategy's order)."""
        return self.select_batch([query])[0]

    def select_batch(self, queries: Sequence[str]) -> list[list[Demo]]:
        """:meth:`select` for many queries (embeddings and index searches are batched)."""
        if not self._fitted:
            raise RuntimeError("DemoSelector: call fit(texts, labels) first")
        queries = list(queries)
        qvecs = None
        if self.strategy in EMBEDDING_STRATEGIES and queries:
            qvecs = np.ascontiguousarray(self.embedder.encode(queries), dtype=np.float32)
        return [self._select_one(q, None if qvecs is None else qvecs[i])
                for i, q in enumerate(queries)]

    def _limit(self) -> int:
        return self.k if self.k is not None else len(self.texts)

    def _depth(self) -> int:
        """How deep to search: enough for k picks after skipping the query and constrained rows."""
        extra = 0 if self.max_tokens is None else 4 * self.candidates
        return min(len(self.texts), max(self.candidates, 4 * self._limit()) + extra)

    def _select_one(self, query: str, qvec: np.ndarray | None) -> list[Demo]:
        if self._limit() == 0:
            return []
        if self.strategy in ("knn", "votek", "mmr", "dpp"):
            rows, rel = self._index.search(qvec, self._depth(), per_label=self.balanced)  # type: ignore[arg-type]
        elif self.strategy == "bm25":
            rows, rel = self._bm25_candidates(query)
        else:
            rows, rel = self._random_candidates(query)
        if self.strategy == "mmr":
            picks = self._greedy(query, rows, rel, self._mmr_gain(rows, rel))
        elif self.strategy == "dpp":
            picks = self._greedy(query, rows, rel, self._dpp_gain(rows, rel))
        else:
            picks = self._greedy(query, rows, rel, None)
        return [Demo(int(rows[j]), self.texts[rows[j]], self.labels[rows[j]], float(rel[j]))
                for j in picks]

    def _bm25_candidates(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        import bm25s

        words = [w for w in bm25s.tokenize([query], stopwords="en", return_ids=False,
                                           show_progress=False)[0] if w in self._bm25_vocab]
        scores = (self._bm25.get_scores(words) if words
                  else np.zeros(len(self.texts), dtype=np.float32))
        return _top_rows(np.asarray(scores, dtype=np.float64), self._depth(),
                         self._by_label if self.balanced else None)

    def _random_candidates(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(query_seed(self.seed, query))
        noise = rng.random(len(self.texts))
        rows, _ = _top_rows(noise, self._depth(), self._by_label if self.balanced else None)
        return rows, np.full(len(rows), math.nan)

    # -- the greedy loop shared by every strategy ----------------------------------------

    def _cost(self, row: int) -> int:
        if row not in self._costs:
            if self.count_tokens is None:
                from datadiet.pipeline.models.tokenizer import load_tokenizer

                tok = load_tokenizer()
                self.count_tokens = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
            text = self.template.separator + self.template.format_demo(
                self.texts[row], self.labels[row])
            self._costs[row] = int(self.count_tokens(text))
        return self._costs[row]

    def _greedy(self, query: str, rows: np.ndarray, rel: np.ndarray,
                gain: Callable[[list[int], np.ndarray], np.ndarray] | None) -> list[int]:
        """Pick positions of ``rows`` one at a time under the constraints.

        ``gain(chosen, open)`` scores the open positions given those chosen (``None``: the
        candidates' own order, i.e. a ranking). Stops at ``k``, when the budget admits nothing
        more, or when the gains say no candidate adds anything (DPP: ``-inf``).
        """
        n = len(rows)
        open_ = np.ones(n, dtype=bool)
        if self.exclude_query and query in self._text_index:
            open_ &= ~np.isin(rows, self._text_index[query])
        labels = self._label_array[rows]
        present = {y for y, ok in zip(labels, open_, strict=True) if ok}
        counts = dict.fromkeys(present, 0)
        budget = self.max_tokens
        chosen: list[int] = []
        limit = self._limit()
        while len(chosen) < limit and open_.any():
            eligible = open_.copy()
            if self.balanced:
                # only labels still available count towards the minimum
                live = {y for y, ok in zip(labels, open_, strict=True) if ok}
                low = min(counts[y] for y in live)
                eligible &= np.asarray([counts[y] == low for y in labels])
            if budget is not None:
                for j in np.flatnonzero(eligible):
                    if self._cost(int(rows[j])) > budget:
                        eligible[j] = False
                        open_[j] = False  # it will never fit: the budget only shrinks
            if not eligible.any():
                continue  # the budget closed every eligible row; recompute with what is open
            if gain is None:
                j = int(np.flatnonzero(eligible)[0])
            else:
                g = gain(chosen, eligible)
                g = np.where(eligible, g, -np.inf)
                j = int(np.argmax(g))
                if not np.isfinite(g[j]):
                    break
            chosen.append(j)
            open_[j] = False
            counts[labels[j]] = counts.get(labels[j], 0) + 1
            if budget is not None:
                budget -= self._cost(int(rows[j]))
        return chosen

    def _mmr_gain(self, rows: np.ndarray, rel: np.ndarray) -> Callable[[list[int], np.ndarray], np.ndarray]:
        vecs = self.vectors[rows]  # type: ignore[index]
        lam = self.mmr_lambda

        def gain(chosen: list[int], _: np.ndarray) -> np.ndarray:
            if not chosen:
                return lam * rel
            redundancy = (vecs @ vecs[chosen].T).max(axis=1)
            return lam * rel - (1.0 - lam) * redundancy

        return gain

    def _dpp_gain(self, rows: np.ndarray, rel: np.ndarray) -> Callable[[list[int], np.ndarray], np.ndarray]:
        """Greedy MAP for ``L = diag(r) S diag(r)`` by incremental Cholesky (Chen et al. 2018).

        ``d2[i]`` is the residual of candidate ``i`` given the chosen set -- the factor by which
        adding ``i`` multiplies ``det(L_chosen)``; its log is the gain. Rows already explained
        by the chosen ones (duplicates, near copies) have ``d2 ~ 0`` and gain ``-inf``.
        """
        vecs = self.vectors[rows].astype(np.float64)  # type: ignore[index]
        r = np.exp(self.dpp_alpha * (rel - np.max(rel)))  # scaled for range; ratios unchanged
        kernel = (r[:, None] * (vecs @ vecs.T)) * r[None, :]
        d2 = np.diag(kernel).copy()
        factors: list[np.ndarray] = []
        state = {"done": 0}
        floor = 1e-6 * float(d2.max())

        def gain(chosen: list[int], _: np.ndarray) -> np.ndarray:
            while state["done"] < len(chosen):  # fold in the rows chosen since the last call
                j = chosen[state["done"]]
                proj = sum((c[j] * c for c in factors), start=np.zeros(len(d2)))
                e = (kernel[j] - proj) / math.sqrt(max(d2[j], floor))
                factors.append(e)
                d2[:] = d2 - e * e
                state["done"] += 1
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(d2 > floor, np.log(np.maximum(d2, floor)), -np.inf)

        return gain


class _Index:
    """Inner-product faiss index over unit vectors (cosine), whole and per label."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> None:
        import faiss

        self.rows = rows
        self.dim = vectors.shape[1]
        self.all = faiss.IndexFlatIP(self.dim)
        self.all.add(vectors)
        self.parts = {}
        for y in sorted(set(labels)):
            local = np.flatnonzero(labels == y)
            index = faiss.IndexFlatIP(self.dim)
            index.add(vectors[local])
            self.parts[y] = (index, local)

    def search(self, qvec: np.ndarray, depth: int, per_label: bool) -> tuple[np.ndarray, np.ndarray]:
        """Pool rows and similarities, best first; ``per_label``: the top ``depth`` of each label."""
        q = qvec.reshape(1, -1).astype(np.float32)
        if not per_label:
            sims, ids = self.all.search(q, min(depth, self.all.ntotal))
            ok = ids[0] >= 0
            return self.rows[ids[0][ok]], sims[0][ok].astype(np.float64)
        found_rows, found_sims = [], []
        for index, local in self.parts.values():
            sims, ids = index.search(q, min(depth, index.ntotal))
            ok = ids[0] >= 0
            found_rows.append(self.rows[local[ids[0][ok]]])
            found_sims.append(sims[0][ok].astype(np.float64))
        rows, sims = np.concatenate(found_rows), np.concatenate(found_sims)
        order = np.argsort(-sims, kind="stable")
        return rows[order], sims[order]


def _top_rows(scores: np.ndarray, depth: int,
              by_label: dict[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``depth`` best rows by score (of each label, when ``by_label``), best first."""
    groups = [np.arange(len(scores))] if by_label is None else list(by_label.values())
    picked = []
    for rows in groups:
        if len(rows) > depth:
            rows = rows[np.argpartition(-scores[rows], depth - 1)[:depth]]
        picked.append(rows)
    rows = np.concatenate(picked)
    rows = rows[np.lexsort((rows, -scores[rows]))]  # by score, ties by pool order
    return rows, scores[rows]


def vote_k(vectors: np.ndarray, size: int, neighbors: int = 15, rho: float = 10.0) -> np.ndarray:
    """Vote-k's graph voting (Su et al. 2022): ``size`` diverse, representative rows.

    Each row points to its ``neighbors`` nearest rows. A row's score is the sum of the votes of
    the rows pointing to it; a voter's vote is ``rho ** -(chosen rows among its neighbours)``, and
    chosen rows vote no more. Dense regions win first; then their voters are discounted, so the
    next picks come from regions not yet covered. Returns pool positions in pick order.
    """
    import faiss
    from scipy.sparse import csr_matrix

    n = len(vectors)
    size = min(size, n)
    m = min(neighbors, n - 1)
    if m <= 0:
        return np.arange(size)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), m + 1)
    out_edges = np.empty((n, m), dtype=np.int64)
    for v in range(n):  # drop the self match (not always first when there are exact duplicates)
        row = [u for u in ids[v] if u != v and u >= 0][:m]
        row += [row[-1]] * (m - len(row)) if row else [v] * m
        out_edges[v] = row
    # graph[v, u] = 1 when u is among v's neighbours (v votes for u)
    graph = csr_matrix((np.ones(n * m), (np.repeat(np.arange(n), m), out_edges.ravel())), shape=(n, n))
    graph.sum_duplicates()
    graph.data[:] = 1.0
    graph_t = graph.T.tocsr()
    covered = np.zeros(n)  # per voter: how many of its neighbours are chosen
    chosen = np.zeros(n, dtype=bool)
    picks: list[int] = []
    for _ in range(size):
        weight = np.where(chosen, 0.0, rho ** -covered)
        score = graph_t @ weight
        score[chosen] = -np.inf
        u = int(np.argmax(score))
        picks.append(u)
        chosen[u] = True
        covered += graph[:, u].toarray().ravel()
    return np.asarray(picks, dtype=np.int64)
