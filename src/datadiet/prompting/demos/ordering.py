"""Ordering demonstrations: the same examples in another order can swing accuracy by many points.

Methods:
    as_selected   the selector's order (most relevant first for the ranking strategies).
    similar_last  ascending similarity to the query, so the most similar demonstration sits next
                  to the query (Liu et al. 2022 found the nearest-last order best for KATE).
    random        a seeded shuffle per query.
    globale       Lu et al. 2022: among candidate orderings, the one whose *predicted labels*
                  over a probe set have the highest entropy -- a prompt that predicts one label
                  for everything is a bad prompt.
    locale        Lu et al. 2022: the ordering with the highest mean entropy of the per-probe
                  label distribution (the least over-confident prompt).

The probe set: Lu et al. generate probe inputs with the LM itself; a 135M model cannot generate
usable ones, so the probes are unlabelled queries drawn from the pool (their labels are never
read). Candidate orderings are every permutation when there are at most ``max_orderings``, else a
seeded sample that always contains the selector's own order. Each ordering's prefix runs once and
its cache serves all the probes (see :mod:`~datadiet.prompting.demos.label_scores`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from datadiet.pipeline.io import SpecError
from datadiet.prompting.demos.label_scores import LabelScorer, label_probabilities
from datadiet.prompting.demos.selection import Demo, query_seed
from datadiet.prompting.demos.templates import PromptTemplate, demo_block

ORDERINGS = ("as_selected", "similar_last", "random", "globale", "locale")


def candidate_orderings(n: int, max_orderings: int, seed: int) -> list[tuple[int, ...]]:
    """All permutations of ``range(n)`` if few enough, else a seeded sample; identity first."""
    if math.factorial(n) <= max_orderings:
        return list(itertools.permutations(range(n)))
    rng = np.random.default_rng(seed)
    found: dict[tuple[int, ...], None] = {tuple(range(n)): None}
    while len(found) < max_orderings:
        found[tuple(int(i) for i in rng.permutation(n))] = None
    return list(found)


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def ordering_entropies(probs: np.ndarray, method: str) -> float:
    """GlobalE or LocalE of one ordering from its probe label distributions ``(probes, labels)``."""
    if method == "globale":
        predicted = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
        return entropy(predicted / predicted.sum())
    if method == "locale":
        return float(np.mean([entropy(row) for row in probs]))
    raise SpecError(f"not an entropy method: {method!r}")


class DemoOrderer:
    """Orders demonstrations for a query; holds the models and probe set the methods need.

    Args:
        method: one of ``as_selected``, ``similar_last``, ``random``, ``globale``, ``locale``.
        embedder: for ``similar_last`` (the one embedder; built on first use if not given).
        label_scorer / template: for ``globale``/``locale``: the label scorer and template the
            evaluation will use, so the entropy is measured on the real prompt format.
        probes: unlabelled probe queries (for ``globale``/``locale``).
        max_orderings: candidate orderings per demonstration set (24 = every order of 4).
        seed: for ``random`` and for sampling orderings.
        probe_cache: a dict to share the probes' label distributions between orderers (a
            ``globale`` and a ``locale`` orderer over the same sets score the probes once).
    """

    def __init__(
        self,
        method: str = "as_selected",
        *,
        embedder: Any = None,
        label_scorer: LabelScorer | None = None,
        template: PromptTemplate | None = None,
        probes: Sequence[str] = (),
        max_orderings: int = 24,
        seed: int = 0,
        probe_cache: dict | None = None,
    ) -> None:
        if method not in ORDERINGS:
            raise SpecError(f"unknown ordering {method!r}; choose one of {', '.join(ORDERINGS)}")
        if method in ("globale", "locale"):
            if label_scorer is None or template is None:
                raise SpecError(f"ordering {method!r} needs a label_scorer and a template")
            if not probes:
                raise SpecError(f"ordering {method!r} needs probe queries (unlabelled pool texts)")
        if max_orderings < 1:
            raise SpecError("max_orderings must be at least 1")
        self.method = method
        self.embedder = embedder
        self.label_scorer = label_scorer
        self.template = template
        self.probes = list(probes)
        self.max_orderings = max_orderings
        self.seed = seed
        self._chosen: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.probe_cache = {} if probe_cache is None else probe_cache
        self.last_entropies: list[float] = []

    def __call__(self, demos: Sequence[Demo], query: str) -> list[Demo]:
        return self.order(demos, query)

    def order(self, demos: Sequence[Demo], query: str) -> list[Demo]:
        demos = list(demos)
        if len(demos) < 2 or self.method == "as_selected":
            return demos
        if self.method == "random":
            rng = np.random.default_rng(query_seed(self.seed, query))
            return [demos[i] for i in rng.permutation(len(demos))]
        if self.method == "similar_last":
            return self._similar_last(demos, query)
        return self._by_entropy(demos)

    def order_batch(self, demos: Sequence[Sequence[Demo]], queries: Sequence[str]) -> list[list[Demo]]:
        """:meth:`order` for many queries (``similar_last`` embeds them in one call)."""
        if self.method == "similar_last":
            self._embed_ahead([d.text for ds in demos for d in ds] + list(queries))
        return [self.order(d, q) for d, q in zip(demos, queries, strict=True)]

    def _embed_ahead(self, texts: list[str]) -> None:
        self._vectors = dict(zip(texts, self._embedder().encode(texts), strict=True))

    def _embedder(self) -> Any:
        if self.embedder is None:
            from datadiet.pipeline.models.embedding import Embedder

            self.embedder = Embedder()
        return self.embedder

    def _similar_last(self, demos: list[Demo], query: str) -> list[Demo]:
        texts = [d.text for d in demos] + [query]
        known = getattr(self, "_vectors", {})
        if all(t in known for t in texts):
            vecs = np.stack([known[t] for t in texts])
        else:
            vecs = self._embedder().encode(texts)
        sims = vecs[:-1] @ vecs[-1]
        order = np.argsort(sims, kind="stable")  # ascending: the most similar ends up last
        return [demos[i] for i in order]

    def _by_entropy(self, demos: list[Demo]) -> list[Demo]:
        """The candidate ordering with the highest GlobalE/LocalE (ties: the earlier candidate)."""
        key = tuple(d.index for d in demos)
        if key not in self._chosen:
            scores = self.entropies(demos)
            self.last_entropies = scores
            perms = candidate_orderings(len(demos), self.max_orderings, self.seed)
            self._chosen[key] = perms[int(np.argmax(scores))]
        return [demos[i] for i in self._chosen[key]]

    def entropies(self, demos: Sequence[Demo]) -> list[float]:
        """The method's entropy for each candidate ordering (in :func:`candidate_orderings` order)."""
        return [ordering_entropies(p, self.method) for p in self.probe_probabilities(demos)]

    def probe_probabilities(self, demos: Sequence[Demo]) -> list[np.ndarray]:
        """Per candidate ordering, the probes' label distributions ``(probes, labels)``."""
        assert self.label_scorer is not None and self.template is not None
        perms = candidate_orderings(len(demos), self.max_orderings, self.seed)
        key = (tuple(d.index for d in demos), tuple(self.probes), len(perms), self.seed)
        if key not in self.probe_cache:
            prefixes = [demo_block(self.template, [demos[i] for i in p]) for p in perms]
            probe_ids = self.label_scorer.encode(
                [self.template.separator + self.template.format_query(q) for q in self.probes])
            logprobs = self.label_scorer.score(
                [self.label_scorer.prefix_ids(p) for p in prefixes], [probe_ids] * len(prefixes))
            self.probe_cache[key] = [label_probabilities(lp) for lp in logprobs]
        return self.probe_cache[key]


def order(demos: Sequence[Demo], query: str, method: str = "as_selected", **kwargs: Any) -> list[Demo]:
    """Order ``demos`` for ``query`` (see :class:`DemoOrderer` for ``kwargs``).

    For many queries build one :class:`DemoOrderer` and call it: it keeps the models and caches
    the chosen ordering of each demonstration set.
    """
    return DemoOrderer(method, **kwargs).order(demos, query)
