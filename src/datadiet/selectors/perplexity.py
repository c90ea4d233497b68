"""Perplexity filtering: score every document with a small causal LM and keep a perplexity range.

Three ways of choosing the range, each from the literature:

* ``keep=f`` — keep the fraction ``f`` (or, for an int, that many rows) with the *lowest* perplexity (CCNet, Wenzek et al. 2020,
  keeps the "head" of a reference-LM perplexity ranking; Ankner et al. 2024, "Perplexed by
  Perplexity", call this the "low" selection). Good at dropping boilerplate-free junk: shuffled
  words, random characters, broken encodings.
* ``band=[lo, hi]`` — keep the documents whose perplexity rank lies between the ``lo`` and ``hi``
  quantiles (Marion et al. 2023, "When Less is More", and Ankner et al. 2024 found the *middle*
  often trains better than the lowest-perplexity head, which is dominated by repetitive,
  templated text).
* ``min_ppl`` / ``max_ppl`` — absolute bounds, for a threshold calibrated once and reused.

``keep`` and ``band`` exclude each other; absolute bounds may be combined with either (a row must
pass every criterion given). Quantiles are taken over the rows that could be scored, by rank (ties
broken by row order), and ``keep`` follows the project's one budget rule
(:func:`datadiet.selectors.common.resolve_keep`), so ``keep=0.3`` keeps exactly as many rows as
``random`` or ``kcenter`` would.

Scoring goes through the run's one :class:`~datadiet.pipeline.models.scoring.LMScorer`, which records
tokens and FLOPs in ``ctx.ledger`` under its stage (``"lm-scoring"``); this step additionally
times that stage and reports its share of tokens/FLOPs in its stats, so the manifest's
``tokens_scored`` / ``flops`` can be read from either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep

if TYPE_CHECKING:
    from datasets import Dataset

#: Before tokenising, a document is cut to ``max_tokens · CHARS_PER_TOKEN_BOUND`` characters, so a
#: megabyte-long document does not cost a megabyte of tokenisation to score its head. A BPE token
#: of English text averages about 4 characters; 64 leaves a wide margin.
CHARS_PER_TOKEN_BOUND = 64

TOO_HIGH = "perplexity:too-high"
TOO_LOW = "perplexity:too-low"
EMPTY = "perplexity:empty"


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def document_token_ids(
    scorer: Any, texts: Sequence[str | None], max_tokens: int
) -> tuple[list[list[int]], np.ndarray]:
    """Tokenise ``texts`` for scoring: the head ``max_tokens`` tokens of each, behind the
    scorer's document-boundary token (so the first real token is scored too).

    Returns the id sequences and a mask of documents that were truncated.
    """
    cut = max_tokens * CHARS_PER_TOKEN_BOUND
    clipped = ["" if t is None else t[:cut] for t in texts]
    enc = scorer.tokenizer(
        clipped, add_special_tokens=False, truncation=True, max_length=max_tokens + 1
    )["input_ids"]
    truncated = np.asarray(
        [len(ids) > max_tokens or (t is not None and len(t) > cut) for ids, t in zip(enc, texts, strict=True)],
        dtype=bool,
    )
    return [[scorer.prefix_id, *ids[:max_tokens]] for ids in enc], truncated


def score_perplexity(
    scorer: Any, texts: Sequence[str | None], max_tokens: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document perplexity ``exp(mean NLL)`` in nats, on the head ``max_tokens`` tokens.

    A pure function of a batch of texts (plus the scorer), so it is the per-shard map of a
    distributed run. Returns ``(perplexity, tokens_scored, truncated)``; perplexity is NaN for
    an empty document (nothing to predict).
    """
    seqs, truncated = document_token_ids(scorer, texts, max_tokens)
    logprobs = scorer.score_ids(seqs)
    ppl = np.asarray(
        [math.exp(-float(lp.mean())) if len(lp) else math.nan for lp in logprobs], dtype=np.float64
    )
    n_tokens = np.asarray([len(lp) for lp in logprobs], dtype=np.int64)
    return ppl, n_tokens, truncated


def perplexity_decision(
    ppl: np.ndarray,
    *,
    keep: float | int | None = None,
    band: Sequence[float] | None = None,
    min_ppl: float | None = None,
    max_ppl: float | None = None,
) -> np.ndarray:
    """The removal kind of each row (``""`` = kept) for the given criteria; see the module doc.

    A row that fails both a lower and an upper criterion is reported as too high.
    """
    n = len(ppl)
    kinds = np.full(n, "", dtype=object)
    valid = np.isfinite(ppl)
    kinds[~valid] = EMPTY
    idx = np.flatnonzero(valid)
    m = len(idx)
    rank = np.empty(n, dtype=np.int64)
    rank[idx[np.argsort(ppl[idx], kind="stable")]] = np.arange(m)
    low = np.zeros(n, dtype=bool)
    high = np.zeros(n, dtype=bool)
    if keep is not None:
        high[idx] = rank[idx] >= resolve_keep(keep, m)
    if band is not None:
        lo, hi = band
        low[idx] |= rank[idx] < _round_half_up(lo * m)
        high[idx] |= rank[idx] >= _round_half_up(hi * m)
    if min_ppl is not None:
        low[idx] |= ppl[idx] < min_ppl
    if max_ppl is not None:
        high[idx] |= ppl[idx] > max_ppl
    kinds[low & valid] = TOO_LOW
    kinds[high & valid] = TOO_HIGH
    return kinds


@register_step
class PerplexityFilter(Step):
    """Keep documents by their perplexity under a small causal LM; see the module docstring.

    Args:
        keep: how many of the scorable rows to keep, lowest perplexity first: a fraction
            (float in [0, 1]) or a count (int), by the one budget rule of ``selectors.common``.
        band: ``[lo_q, hi_q]`` quantiles of the perplexity ranking to keep (the middle).
        min_ppl / max_ppl: absolute perplexity bounds.
        model: Hugging Face id or local folder of the causal LM; ``None`` uses the run's shared
            scorer (default SmolLM2-135M-Instruct, offline).
        max_tokens: documents are scored on their first ``max_tokens`` tokens only. Perplexity
            is a per-token average, so the head is a fair estimate for long documents, and the
            cost per document stays bounded; the number of truncated documents is in the stats.

    Removed rows get ``"perplexity:too-high"`` or ``"perplexity:too-low"``, and documents with
    no token to score (empty text) ``"perplexity:empty"``. Scores are the perplexities
    themselves — *lower* is more fluent, the one place where a higher score is not better.
    """

    name = "perplexity"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True

    def __init__(
        self,
        *,
        keep: float | int | None = None,
        band: Sequence[float] | None = None,
        min_ppl: float | None = None,
        max_ppl: float | None = None,
        model: str | None = None,
        max_tokens: int = 512,
    ) -> None:
        if keep is not None and band is not None:
            raise ValueError("give either keep (lowest-perplexity fraction) or band, not both")
        if keep is None and band is None and min_ppl is None and max_ppl is None:
            raise ValueError("perplexity needs keep=<fraction>, band=[lo_q, hi_q], min_ppl or max_ppl")
        if keep is not None:
            validate_keep(keep)
        if band is not None:
            if len(band) != 2 or not 0.0 <= float(band[0]) < float(band[1]) <= 1.0:
                raise ValueError(f"band must be [lo_q, hi_q] with 0 <= lo_q < hi_q <= 1, got {band!r}")
            band = [float(band[0]), float(band[1])]
        if min_ppl is not None and max_ppl is not None and not float(min_ppl) < float(max_ppl):
            raise ValueError(f"min_ppl ({min_ppl}) must be below max_ppl ({max_ppl})")
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        self.keep = keep
        self.band = band
        self.min_ppl = None if min_ppl is None else float(min_ppl)
        self.max_ppl = None if max_ppl is None else float(max_ppl)
        self.model = None if model is None else str(model)
        self.max_tokens = int(max_tokens)

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's perplexity, tokens scored, their FLOPs and whether it was cut, from the
        process's one scorer (loaded once per process; its work booked on the view's
        ledger)."""
        n = batch.num_rows
        if n == 0:
            return {"ppl": np.empty(0), "tokens": np.empty(0, np.int64),
                    "flops": np.empty(0), "truncated": np.empty(0, bool),
                    "max_tokens": np.empty(0, np.int64)}
        texts = view.texts(batch).to_pylist()
        with view.lm_scorer(self.model) as scorer, scorer.ledger.stage(scorer.stage):
            max_tokens = self.effective_max_tokens(scorer)
            ppl, predicted, truncated = score_perplexity(scorer, texts, max_tokens)
            tokens = predicted + 1  # the boundary token in front is read, not predicted
            flops = np.array([scorer.shape.flops(int(k), int(k), training=False)
                              for k in tokens], dtype=np.float64)
        return {"ppl": ppl, "tokens": tokens, "flops": flops, "truncated": truncated,
                "max_tokens": np.full(n, max_tokens, np.int64)}

    def effective_max_tokens(self, scorer: Any) -> int:
        """``max_tokens``, less room for the boundary token within the model's context."""
        context = scorer.max_context
        return min(self.max_tokens, int(context) - 1) if context else self.max_tokens

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        ppl = np.asarray(features["ppl"], dtype=np.float64)
        if len(ppl) == 0:
            return Selection.keep_all(0)
        kinds = perplexity_decision(
            ppl, keep=self.keep, band=self.band, min_ppl=self.min_ppl, max_ppl=self.max_ppl
        )
        keep = kinds == ""
        kept_ppl = ppl[keep]
        finite = ppl[np.isfinite(ppl)]
        stats = {
            "scored": int(len(finite)),
            "tokens_scored": int(np.sum(features["tokens"])),
            "flops": float(np.sum(features["flops"])),
            "max_tokens": int(np.max(features["max_tokens"])),
            "truncated": int(np.count_nonzero(features["truncated"])),
            "median_ppl": float(np.median(finite)) if len(finite) else None,
            "kept_ppl_min": float(kept_ppl.min()) if len(kept_ppl) else None,
            "kept_ppl_max": float(kept_ppl.max()) if len(kept_ppl) else None,
            "model": self.model or ctx.scorer_model or "default",
        }
        return Selection.from_mask(keep, kinds, scores=ppl, stats=stats)
