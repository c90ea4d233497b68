"""Instruction relevance: is a response more likely under its own instruction than under others?
For a row with instruction ``x`` and response ``y``, and ``contrast`` instructions ``x'_1..x'_K``
of other rows of the same dataset::

    relevance = mean_k (mean loss of y given x'_k)  -  mean loss of y given x     (nats/token)

This is a conditional pointwise mutual information between the instruction and the response,
measured against a baseline that has the *form* of an instruction but not its content: the
domain-conditional PMI of Holtzman et al. 2021 ("Surface Form Competition"), whose "domain
premise" is here another row's instruction. IFD (Li et al. 2023) asks the same question against
no instruction at all, and with a small scorer that baseline is too weak: any instruction-shaped
text in front of a short answer makes it more predictable, so an answer swapped in from another
task, or a generic non-answer ("I'm not sure..."), still gets IFD < 1 and passes Cherry's
"the instruction must help" filter. Against other rows' instructions such a response gains
nothing from its own (relevance ≈ 0), while a response that answers its instruction — a span of
the passage, the right option, an on-topic sentence — is clearly more likely under it.

Rows with ``relevance <= min_relevance`` (0 by default: the own instruction helps no more than
an average other one) are removed as ``relevance:off-topic``; the rest are ranked by relevance
and ``keep`` of them kept (``keep=1.0``, the default, only filters). The intended use is in front
of a ranking step::

    - relevance: {contrast: 3}     # drop responses that do not answer their own instruction
    - ifd: {keep: 0.3}             # then Cherry's ranking

Chat mode (``chat=True``, the default, for a scorer whose tokenizer has a chat template): the
instruction is sent as a user message through the tokenizer's chat template, and the response is
scored as the assistant's reply *with its end-of-turn token* (the tokenizer's end-of-sequence
token, ``<|im_end|>`` for SmolLM2-Instruct) — the form an instruction-tuned scorer was trained
on, and the form in which "this reply is finished" is part of the prediction. An answer to
another question is then unlikely to end where it does under its own instruction, which is what
separates swapped answers: on a development draw of T0 rows (not the benchmark's), the swapped
answers' relevance went from a median of +0.5 in raw text to -1.3 in chat mode, while nine in
ten clean rows stayed above +0.4. ``chat=False`` scores raw ``instruction + response`` text, as
``ifd`` does.

The contrast instructions are drawn from the step's input by a seeded permutation (each row's
``contrast`` successors in it, skipping rows with the very same instruction text), so a run is
reproducible. The draw is the engine's global pass (:class:`~datadiet.pipeline.steps.GlobalPass`):
each row's instruction goes to the driver once, the partners are drawn there over the step's
whole input, and each piece of rows (a batch, a Dask partition) gets just the instructions its
rows are contrasted with — so the partners do not depend on where the rows were mapped. Each contrast pair ``(x'_k, y)`` is scored and cached exactly like an IFD pair,
keyed by its content (and, in chat mode, the end-of-turn token) — so with ``chat=False`` a row's
own pair is shared with the ``ifd`` step, and another seed or ``contrast`` simply scores (and
caches) other pairs. A multi-turn row is scored on all its assistant turns, each turn's context
replaced by the other row's last context for the contrast (in chat mode each context, rendered
as for ``ifd``, is one user message). Cost: ``1 + contrast`` instruction+response passes per row.

What it does not catch: a response that copies its instruction is *very* relevant by this
measure (IFD ranks those lowest — hence ``ifd`` after it), and a truncated answer to the right
question is still relevant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import GlobalPass, RecordView, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep
from datadiet.selectors.ifd import (
    TurnScoringStep,
    cached_ifd_losses,
    uses_chat_template,
    validate_scoring_options,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["Relevance", "as_user_turn", "contrast_partners", "relevance_scores"]

OFF_TOPIC = "relevance:off-topic"
BELOW_BUDGET = "relevance:below-budget"
EMPTY = "relevance:empty-response"


def contrast_partners(instructions: Sequence[str], contrast: int, seed: int) -> np.ndarray:
    """``(n, K)`` row indices whose instructions each row's response is also scored under.

    A seeded permutation of the rows; each row's partners are its next rows in it (cyclically),
    skipping rows whose instruction is the same text, so no row is its own contrast. ``K`` is
    ``min(contrast, distinct instructions - 1)``; a row with no other distinct instruction gets
    ``-1``.
    """
    n = len(instructions)
    k = min(contrast, len(set(instructions)) - 1)
    out = np.full((n, max(k, 0)), -1, dtype=np.int64)
    if k <= 0:
        return out
    order = np.random.default_rng(seed).permutation(n)
    for pos, row in enumerate(order):
        found, step = 0, 1
        while found < k and step < n:
            other = int(order[(pos + step) % n])
            if instructions[other] != instructions[row]:
                out[row, found] = other
                found += 1
            step += 1
    return out


def as_user_turn(tokenizer: Any, instruction: str) -> str:
    """``instruction`` as a user message, up to where the assistant's reply begins."""
    return tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                         tokenize=False, add_generation_prompt=True)


def relevance_scores(own: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Relevance from IFD losses: ``own`` ``(n, 4)`` and ``contrast`` ``(n, K, 4)``.

    Mean over the contrast instructions of the response's mean loss under them, minus its mean
    loss under its own instruction (the same response tokens in every pass). NaN where a row
    has no response token or no contrast.
    """
    tokens = own[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (contrast[:, :, 0].mean(axis=1) - own[:, 0]) / tokens
    out[~(tokens > 0) | (contrast.shape[1] == 0)] = np.nan
    return out


@register_step
class Relevance(TurnScoringStep):
    """Drop responses that are no more likely under their own instruction than under others'.

    See the module docstring.

    Args:
        keep: rows to keep among the relevant ones (a fraction of the step's input rows, or a
            count), most relevant first; ``1.0`` keeps every relevant row.
        contrast: how many other rows' instructions each response is scored under (each costs
            one more forward pass of instruction + response; more of them average out the noise
            of any single one).
        chat: score through the tokenizer's chat template with the end-of-turn token (see the
            module docstring); ignored for a tokenizer without a chat template.
        min_relevance: rows with relevance <= this (nats per response token) are removed;
            ``None`` only ranks (the budget then removes the least relevant rows).
        seed: the permutation that assigns the contrast instructions.
        max_length: token window of one scored pair (as in ``ifd``).
        model: causal LM id or folder; ``None`` uses the run's shared scorer (SmolLM2).
        cache: ``True`` (the datadiet cache), a folder, or ``False``.

    Removed rows: ``relevance:off-topic``, ``relevance:below-budget``,
    ``relevance:empty-response``. Scores: the relevance of every row (NaN where it has no
    response token, or the input has no other instruction to contrast with — such rows are kept).
    """

    name = "relevance"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True
    needs_instruction_data = True

    def __init__(
        self,
        *,
        keep: float | int = 1.0,
        contrast: int = 3,
        chat: bool = True,
        min_relevance: float | None = 0.0,
        seed: int = 0,
        max_length: int = 512,
        model: str | None = None,
        cache: bool | str = True,
    ) -> None:
        validate_keep(keep)
        if isinstance(contrast, bool) or not isinstance(contrast, int) or contrast < 1:
            raise ValueError(f"contrast must be an int >= 1, got {contrast!r}")
        if min_relevance is not None and (isinstance(min_relevance, bool)
                                          or not isinstance(min_relevance, int | float)):
            raise ValueError(f"min_relevance must be a number or null, got {min_relevance!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        validate_scoring_options(max_length, cache)
        self.keep = keep
        self.contrast = contrast
        self.chat = bool(chat)
        self.min_relevance = None if min_relevance is None else float(min_relevance)
        self.seed = seed
        self.max_length = max_length
        self.model = model
        self.cache = cache


    # -- map / reduce: the contrast instructions come from a global pass ----------------------

    def global_pass(self) -> GlobalPass:
        """Each row's contrast instructions are drawn over the step's whole input: each piece
        sends its rows' last instructions to the driver (each row's once), the combine draws
        the partners (:func:`contrast_partners`) and gives each piece the distinct
        instructions its rows are contrasted with, and no others."""
        return GlobalPass(self._instructions, self._partner_instructions)

    def _instructions(self, batch: pa.RecordBatch | pa.Table, view: RecordView) -> list[str]:
        return [pairs[-1][0] for pairs in view.turns(batch, self.name)]

    def _partner_instructions(self, summaries: list[list[str]]
                              ) -> list[tuple[list[str], np.ndarray]]:
        """Per piece: the distinct contrast instructions, and each row's ``(rows, K)`` indices
        into them."""
        instructions = [text for piece in summaries for text in piece]
        partners = contrast_partners(instructions, self.contrast, self.seed)
        out, start = [], 0
        for piece in summaries:
            rows = partners[start : start + len(piece)]
            start += len(piece)
            distinct, index = np.unique(rows, return_inverse=True)
            out.append(([instructions[r] for r in distinct.tolist()],
                        index.reshape(rows.shape).astype(np.int64)))
        return out

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's IFD losses under its own instruction and under its ``K`` contrast
        instructions (``view.combined``), through the score cache: ``losses`` ``(n, 1 + K,
        4)``; its turns; how many of its pairs this map scored (the rest were cached); the
        token window; whether the chat template was used."""
        n = batch.num_rows
        distinct, index = view.combined if view.combined is not None \
            else ([], np.empty((n, 0), np.int64))
        k = index.shape[1]
        if n == 0:
            return {"losses": np.empty((0, k + 1, 4)), "turns": np.empty(0, np.int64),
                    "scored": np.empty(0, np.int64), "window": np.empty(0, np.int64),
                    "chat": np.empty(0, bool)}
        rows = view.turns(batch, self.name)
        with view.lm_scorer(self.model) as scorer:
            tok = scorer.tokenizer
            chat = uses_chat_template(self.chat, scorer)
            end_token = tok.eos_token_id if chat else None
            if chat:
                rows = [[(as_user_turn(tok, prompt), response) for prompt, response in pairs]
                        for pairs in rows]
                distinct = [as_user_turn(tok, text) for text in distinct]
            # each row followed by its contrast pairs: they share the response-alone pass,
            # which the scorer runs once per distinct sequence within a chunk of rows
            grouped = [pairs if j == 0 else [(distinct[index[row, j - 1]], response)
                                             for _, response in pairs]
                       for row, pairs in enumerate(rows) for j in range(k + 1)]
            losses, stats = cached_ifd_losses(grouped, scorer, None, self.max_length,
                                              self.cache, label=self.name,
                                              end_token=end_token)
        # the pairs this map scored, spread over its rows so that they sum
        scored = np.minimum(k + 1, np.maximum(0, stats["rows_scored"]
                                              - (k + 1) * np.arange(n, dtype=np.int64)))
        return {"losses": losses.reshape(n, k + 1, 4),
                "turns": np.asarray([len(pairs) for pairs in rows], np.int64),
                "scored": scored, "window": np.full(n, stats["max_length"], np.int64),
                "chat": np.full(n, chat)}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        losses = np.asarray(features["losses"], dtype=np.float64)
        n = len(losses)
        if n == 0:
            return Selection.keep_all(0)
        k = losses.shape[1] - 1
        chat = bool(np.all(features["chat"]))
        own = losses[:, 0]
        score = relevance_scores(own, losses[:, 1:])
        # the end-of-turn token is scored once per turn; a response of nothing else is empty
        content = own[:, 2] - (np.asarray(features["turns"]) if chat else 0)
        kinds = np.full(n, "", dtype=object)
        kinds[~(content > 0)] = EMPTY
        score[~(content > 0)] = np.nan
        if self.min_relevance is not None:
            kinds[(kinds == "") & (score <= self.min_relevance)] = OFF_TOPIC
        eligible = np.flatnonzero(kinds == "")
        budget = min(resolve_keep(self.keep, n), len(eligible))
        # rows without a contrast (NaN) rank last among the eligible but are not off-topic
        ranked = eligible[np.argsort(-np.nan_to_num(score[eligible], nan=-np.inf), kind="stable")]
        kinds[ranked[budget:]] = BELOW_BUDGET
        keep = kinds == ""
        finite = score[np.isfinite(score)]
        scored = int(np.sum(features["scored"]))
        stats = {"model": self._identity, "max_length": int(np.max(features["window"])),
                 "rows_scored": scored, "cache_hits": n * (k + 1) - scored,
                 "truncated_rows": int((losses[:, :, 3] > 0).sum())}
        stats.update({
            "contrast": int(k), "chat_template": chat, "seed": self.seed,
            "min_relevance": self.min_relevance, "k": int(budget),
            "off_topic": int((kinds == OFF_TOPIC).sum()),
            "median_relevance": float(np.median(finite)) if len(finite) else None,
        })
        return Selection.from_mask(keep, kinds, scores=score, stats=stats)
