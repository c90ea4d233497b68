"""Instruction-Following Difficulty (Li et al. 2023, "From Quantity to Quality", Cherry LLM).
For a row with instruction ``x`` and response ``y``::

    IFD = mean loss of y's tokens given x  /  mean loss of y's tokens alone

A high IFD (near 1) means the instruction barely helps the model predict the answer — the row
teaches instruction following; a low one means the answer follows from the instruction almost
mechanically. IFD >= 1 means the instruction does not help at all (the response is unrelated to
it, or the pair is misaligned), so those rows are dropped by default; the rest are ranked by IFD,
highest first, and ``keep`` of them kept. ``ratio="ppl"`` gives Superfiltering's variant (Li et
al. 2024), the ratio of perplexities ``exp(loss | x) / exp(loss)``, which ranks rows by the loss
*difference* instead; Superfiltering shows a small scorer (GPT-2) filters about as well as a 7B
one, so the offline SmolLM2 default is a fair choice.

Token windows: a pair is scored in ``max_length`` tokens (a boundary token, the instruction, the
response). The instruction is cut from the left, so the response is always scored behind the
instruction text nearest to it; only a response longer than three quarters of the window is cut
(to its head), leaving the last quarter-window of the instruction in view. The "alone" pass scores
exactly the same response tokens behind the boundary token, so the two losses are over the same
tokens and their ratio is a fair one. Multi-turn chats are scored on every assistant turn, each
in the context of the conversation before it, and a row's losses are token-weighted means over
all its turns.

Special tokens in a response (an end-of-text marker such as T0's ``<|endoftext|>``) are not
scored: they are formatting, not content, and a marker the model never predicts would add the
same large loss to both passes and pull every short answer's IFD towards 1. A response of
nothing but such markers has no token to score (``ifd:empty-response``).

The scores (sums of both losses and token counts) are cached on disk per row content, model and
window (:mod:`datadiet.pipeline.score_cache`), so a second run with another ``keep`` or ``ratio``
makes no model call, and an interrupted run resumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from datadiet.pipeline.models.loading import causal_lm_config
from datadiet.pipeline.models.scoring import LMScorer, choose_backend
from datadiet.pipeline.records import iter_records, sft_format, turns, turns_key
from datadiet.pipeline.score_cache import ScoreCache, cached_scores, model_identity
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["IFD", "cached_ifd_losses", "ifd_losses", "ifd_ratio", "pair_windows", "row_scorer"]

#: Texts are cut to ``max_length · CHARS_PER_TOKEN_BOUND`` characters before tokenising, so a
#: megabyte-long prompt does not cost a megabyte of tokenisation to keep its tail.
CHARS_PER_TOKEN_BOUND = 64
#: Bump when the computation changes: cached entries of an old version are never read.
IFD_METHOD = "ifd-losses-v2"
NOT_HELPED = "ifd:instruction-does-not-help"
BELOW_BUDGET = "ifd:below-budget"
EMPTY = "ifd:empty-response"


def pair_windows(
    prompt_ids: Sequence[int], response_ids: Sequence[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """The window of one pair: ``(instruction tail, response head, truncated)``.

    ``1 + len(tail) + len(head) <= max_length`` (one boundary token in front). The response
    keeps up to ``max_length - 1`` tokens minus room for the last ``min(len(prompt),
    max_length // 4)`` instruction tokens; the instruction fills what is left from its end.
    """
    body = max_length - 1
    head = list(response_ids[: body - min(len(prompt_ids), max_length // 4)])
    room = body - len(head)
    tail = list(prompt_ids[-room:]) if room > 0 else []
    return tail, head, len(head) < len(response_ids) or len(tail) < len(prompt_ids)


def ifd_losses(
    scorer: Any, rows: Sequence[Sequence[tuple[str, str]]], max_length: int = 512,
    end_token: int | None = None,
) -> np.ndarray:
    """Summed response losses of each row, given the instruction and alone.

    ``end_token`` (a chat model's end-of-turn id) is appended to every response and scored with
    it, in both passes: "the reply is finished here" is then part of what is predicted (the
    ``relevance`` step's chat mode); the default scores the response's own tokens only.

    Returns an ``(n, 4)`` array: ``[conditioned loss sum, alone loss sum, response tokens,
    truncated turns]`` (nats). A pure function of the rows and the scorer — the per-shard map of
    a distributed run. Identical sequences (the same answer "yes" under many instructions) are
    scored once, and both passes of every row share one length-bucketed ``score_ids`` call.
    """
    cut = max_length * CHARS_PER_TOKEN_BOUND
    flat = [(p[-cut:], r[:cut]) for pairs in rows for p, r in pairs]
    tok = scorer.tokenizer
    prompts = tok([p for p, _ in flat], add_special_tokens=False)["input_ids"] if flat else []
    special = set(getattr(tok, "all_special_ids", ()))
    ending = [] if end_token is None else [int(end_token)]
    responses = [[t for t in ids if t not in special] + ending for ids in
                 tok([r for _, r in flat], add_special_tokens=False)["input_ids"]] if flat else []
    # (sequence, first scored position): the conditioned pass needs logits for the response
    # only, so the scorer forms none for the instruction's positions
    unique: dict[tuple[tuple[int, ...], int], int] = {}
    plan = []  # per pair: (conditioned seq index, alone seq index, response length, truncated)
    for p_ids, r_ids in zip(prompts, responses, strict=True):
        tail, head, truncated = pair_windows(p_ids, r_ids, max_length)
        cond = (tuple([scorer.prefix_id, *tail, *head]), len(tail))
        alone = (tuple([scorer.prefix_id, *head]), 0)
        plan.append((unique.setdefault(cond, len(unique)), unique.setdefault(alone, len(unique)),
                     len(head), truncated))
    logprobs = scorer.score_ids([list(seq) for seq, _ in unique],
                                starts=[start for _, start in unique]) if unique else []
    out = np.zeros((len(rows), 4), dtype=np.float64)
    pair = 0
    for row, pairs in enumerate(rows):
        for _ in pairs:
            cond, alone, n, truncated = plan[pair]
            pair += 1
            if n:
                out[row, 0] -= float(np.sum(logprobs[cond][-n:], dtype=np.float64))
                out[row, 1] -= float(np.sum(logprobs[alone], dtype=np.float64))
                out[row, 2] += n
            out[row, 3] += truncated
    return out


def ifd_ratio(losses: np.ndarray, ratio: str = "loss") -> np.ndarray:
    """IFD from :func:`ifd_losses` rows: ``"loss"`` (Cherry) or ``"ppl"`` (Superfiltering).

    NaN where a row has no response token to score.
    """
    losses = np.atleast_2d(losses)
    n = losses[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        cond, alone = losses[:, 0] / n, losses[:, 1] / n
        if ratio == "loss":
            out = cond / alone
        elif ratio == "ppl":
            out = np.exp(cond - alone)
        else:
            raise ValueError(f"ratio must be 'loss' or 'ppl', got {ratio!r}")
    out[~(n > 0)] = np.nan
    return out


def row_scorer(model: str | None, ctx: StepContext) -> LMScorer:
    """The run's shared scorer, or one for another ``model`` on the same ledger."""
    if model is None or model == ctx.scorer_model:
        return ctx.lm_scorer()
    key = f"scorer:{model}"
    if key not in ctx._cache:
        ctx._cache[key] = LMScorer(model, ledger=ctx.ledger)
    return ctx._cache[key]


def conversation_rows(ds: Dataset, ctx: StepContext, step: str) -> list[list[tuple[str, str]]]:
    """Every row of a fine-tuning dataset as its (prompt, response) turns, read the one way the
    fine-tuning steps (IFD, the judge, relevance) share; ``step`` names the step in errors."""
    fmt = sft_format(ds.column_names, ctx.record_format, ctx.text_field, step=step)
    return [turns(r, fmt) for batch in iter_records(ds, fmt, ctx.batch_size) for r in batch]


def uses_chat_template(wanted: bool, scorer: LMScorer) -> bool:
    """Whether prompts go through the chat template: asked for, and the tokenizer has one."""
    return wanted and getattr(scorer.tokenizer, "chat_template", None) is not None


def scorer_identity(scorer: LMScorer) -> dict[str, Any]:
    """The scorer's model as the manifest and the cache key name it (plus the backend)."""
    return {**model_identity(scorer.model_name), "backend": scorer.backend}


def validate_scoring_options(max_length: object, cache: object, min_length: int = 8) -> None:
    """The options every LM-scoring step (``ifd``, ``judge``, ``relevance``) shares, checked one
    way, so a spec error reads the same whichever step it is in."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < min_length:
        raise ValueError(f"max_length must be an int >= {min_length}, got {max_length!r}")
    if not isinstance(cache, bool | str):
        raise ValueError(f"cache must be true, false or a folder, got {cache!r}")


def cache_folders(cache: bool | str) -> list[Path]:
    """The folder a scoring step's ``cache:`` names (none for true/false): what it writes."""
    return [Path(cache).expanduser()] if isinstance(cache, str) else []


def open_cache(cache: bool | str, identity: dict[str, Any], method: str,
               max_length: int) -> ScoreCache | None:
    """The score cache for this model (keyed by its weights' hash or hub revision), or None."""
    if cache is False:
        return None
    model_key = identity["hash"] or f"{identity['name']}@{identity['revision']}"
    return ScoreCache(model_key, method, max_length, None if cache is True else cache)


def cached_ifd_losses(
    rows: Sequence[Sequence[tuple[str, str]]], scorer: LMScorer, ctx: StepContext | None,
    max_length: int, cache: bool | str, label: str = "ifd", end_token: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`ifd_losses` of each row (a list of ``(prompt, response)`` pairs) through the cache.

    Keyed by the pairs' content, so any step that scores the same pairs (``ifd`` and
    ``relevance`` both score a row's own pairs) shares the entries. Returns the ``(n, 4)``
    losses and what the manifest should say (model, window, rows scored, cache hits).
    ``end_token`` (see :func:`ifd_losses`) is part of the cache key. ``ctx=None`` (a map on
    a worker): no progress bar, the work booked on the scorer's ledger.
    """
    if scorer.max_context:
        max_length = min(max_length, int(scorer.max_context))
    identity = scorer_identity(scorer)
    method = IFD_METHOD if end_token is None else f"{IFD_METHOD}+end:{int(end_token)}"
    store = open_cache(cache, identity, method, max_length)
    # a row costs its two passes: instruction + response, then the response again
    costs = np.asarray([min(sum(len(p) + 2 * len(r) for p, r in pairs) // 4 + 2,
                            2 * max_length) for pairs in rows])
    ledger = ctx.ledger if ctx is not None else scorer.ledger
    bar = ctx.progress(len(rows), label) if ctx is not None else tqdm(disable=True)
    try:
        with (ledger.stage(scorer.stage) if ledger is not None else nullcontext()), bar:
            values, computed = cached_scores(
                [turns_key(pairs) for pairs in rows],
                lambda idx: ifd_losses(scorer, [rows[i] for i in idx], max_length, end_token),
                store, width=4, costs=costs, chunk_cost=8 * scorer.tokens_per_batch,
                on_progress=bar.update,
            )
    finally:
        if store is not None:
            store.close()
    stats = {"model": identity, "max_length": max_length, "rows_scored": computed,
             "cache_hits": len(rows) - computed,
             "truncated_rows": int((values[:, 3] > 0).sum())}
    return values, stats


def lm_identity(model: str | None) -> dict[str, Any]:
    """What :func:`scorer_identity` says of ``model``, from its files and config alone (no
    weights loaded): the driver of a distributed run names the model its workers load."""
    return {**model_identity(model), "backend": choose_backend(causal_lm_config(model))}


class TurnScoringStep(Step):
    """What the LM steps that score a row's turns (``ifd``, ``judge``) share: their score
    cache folder, the model named in the driver before any map, the turn columns each map
    reads. Subclasses set ``model`` and ``cache``."""

    model: str | None
    cache: bool | str

    def writes_paths(self) -> list[Path]:
        return cache_folders(self.cache)

    def prepare(self, ctx: StepContext) -> None:
        """The model the maps load, named in the driver (the manifest's ``model``)."""
        self._identity = lm_identity(self.model or ctx.scorer_model)

    def map_columns(self, view: RecordView, columns: list[str]) -> list[str]:
        return view.turn_columns(columns, self.name)


@register_step
class IFD(TurnScoringStep):
    """Keep the rows whose instruction helps the model most to answer; see the module docstring.

    Args:
        keep: rows to keep (the one budget rule: a fraction of the step's input rows, or a
            count), highest IFD first, among rows below ``max_ifd``.
        max_ifd: rows with IFD >= this are dropped ("the instruction does not help"); ``None``
            keeps them in the ranking.
        ratio: ``"loss"`` (Cherry's ratio of mean losses) or ``"ppl"`` (Superfiltering's ratio
            of perplexities).
        max_length: token window of one scored pair.
        model: causal LM id or folder; ``None`` uses the run's shared scorer (SmolLM2).
        cache: ``True`` caches scores under the datadiet cache, a path caches them there,
            ``False`` does not cache.

    Removed rows: ``ifd:instruction-does-not-help``, ``ifd:below-budget``, and
    ``ifd:empty-response`` (nothing to score). Scores: the IFD of every row.
    """

    name = "ifd"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True
    needs_instruction_data = True

    def __init__(
        self,
        *,
        keep: float | int = 0.1,
        max_ifd: float | None = 1.0,
        ratio: str = "loss",
        max_length: int = 512,
        model: str | None = None,
        cache: bool | str = True,
    ) -> None:
        validate_keep(keep)
        if ratio not in ("loss", "ppl"):
            raise ValueError(f"ratio must be 'loss' (Cherry IFD) or 'ppl' (Superfiltering), got {ratio!r}")
        validate_scoring_options(max_length, cache)
        if max_ifd is not None and not (isinstance(max_ifd, int | float) and max_ifd > 0):
            raise ValueError(f"max_ifd must be a positive number or null, got {max_ifd!r}")
        self.keep = keep
        self.max_ifd = None if max_ifd is None else float(max_ifd)
        self.ratio = ratio
        self.max_length = max_length
        self.model = model
        self.cache = cache

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's :func:`ifd_losses` (through the score cache), whether this map scored
        it (1) or found it cached (0), and the token window used."""
        n = batch.num_rows
        if n == 0:
            return {"losses": np.empty((0, 4)), "scored": np.empty(0, np.int8),
                    "window": np.empty(0, np.int64)}
        rows = view.turns(batch, self.name)
        with view.lm_scorer(self.model) as scorer:
            losses, stats = cached_ifd_losses(rows, scorer, None, self.max_length, self.cache,
                                              label=self.name)
        scored = np.zeros(n, np.int8)
        scored[: stats["rows_scored"]] = 1  # a count per batch, spread so that it sums
        return {"losses": losses, "scored": scored,
                "window": np.full(n, stats["max_length"], np.int64)}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        losses = np.asarray(features["losses"], dtype=np.float64)
        n = len(losses)
        if n == 0:
            return Selection.keep_all(0)
        ifd = ifd_ratio(losses, self.ratio)
        kinds = np.full(n, "", dtype=object)
        kinds[np.isnan(ifd)] = EMPTY
        limit = math.inf if self.max_ifd is None else self.max_ifd
        kinds[(kinds == "") & (ifd >= limit)] = NOT_HELPED
        eligible = np.flatnonzero(kinds == "")
        k = min(resolve_keep(self.keep, n), len(eligible))
        ranked = eligible[np.argsort(-ifd[eligible], kind="stable")]
        kinds[ranked[k:]] = BELOW_BUDGET
        keep = kinds == ""
        finite = ifd[np.isfinite(ifd)]
        scored = int(np.sum(features["scored"]))
        stats = {"model": self._identity, "max_length": int(np.max(features["window"])),
                 "rows_scored": scored, "cache_hits": n - scored,
                 "truncated_rows": int((losses[:, 3] > 0).sum())}
        stats.update({
            "ratio": self.ratio,
            "k": int(k),
            "not_helped": int((kinds == NOT_HELPED).sum()),
            "median_ifd": float(np.median(finite)) if len(finite) else None,
            "kept_ifd_min": float(ifd[keep].min()) if keep.any() else None,
            "kept_ifd_max": float(ifd[keep].max()) if keep.any() else None,
        })
        return Selection.from_mask(keep, kinds, scores=ifd, stats=stats)
