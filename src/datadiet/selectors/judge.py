"""LM-as-judge quality scores, read from the model's probabilities rather than sampled.
The rating prompt asks for a score from 1 to 6; instead of generating an answer and parsing it
(slow, and a coin flip at temperature > 0), the judge reads the model's next-token distribution at
the first answer position, keeps the probabilities of the rating tokens "1".."6", renormalises
them and takes the expected rating — the way DEITA's quality and complexity scorers read their
scores (Liu et al. 2023). One forward pass per row, no decoding, and a continuous score that ranks
rows even when the most likely digit ties.

The template is a parameter with ``{instruction}`` and ``{response}`` placeholders; for a chat
model it is sent as a user message through the tokenizer's chat template (``chat=True``), so
the answer position is where the model starts its reply (after ``answer_prefix``, "Rating: " by
default, which makes a small model answer with a digit). A multi-turn row is judged on its last
assistant turn, with the conversation before it as the instruction. Long rows are cut to
``max_length`` tokens: the instruction from the left, the response from the right, each keeping
at least half the window it needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.records import turns_key
from datadiet.pipeline.score_cache import cached_scores
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep
from datadiet.selectors.ifd import (
    TurnScoringStep,
    open_cache,
    scorer_identity,
    uses_chat_template,
    validate_scoring_options,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["DEFAULT_TEMPLATE", "Judge", "judge_prompts", "rating_scores"]

DEFAULT_TEMPLATE = (
    "Rate the response to the instruction below for helpfulness, correctness and completeness, "
    "on a scale from 1 (useless or wrong) to 6 (excellent).\n\n"
    "Instruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Answer with one digit from 1 to 6."
)
RATINGS = ("1", "2", "3", "4", "5", "6")
JUDGE_METHOD = "judge-v1"
BELOW_BUDGET = "judge:below-budget"
BELOW_MIN = "judge:below-min-score"


def _fit(tokenizer: Any, instruction: str, response: str, budget: int) -> tuple[str, str]:
    """Cut instruction (left) and response (right) so together they take ``budget`` tokens."""
    ins = tokenizer(instruction, add_special_tokens=False)["input_ids"]
    res = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(ins) + len(res) <= budget:
        return instruction, response
    keep_res = min(len(res), max(budget // 2, budget - len(ins)))
    keep_ins = budget - keep_res
    ins_text = tokenizer.decode(ins[-keep_ins:]) if keep_ins > 0 else ""
    return ins_text, tokenizer.decode(res[:keep_res])


def judge_prompts(
    tokenizer: Any, rows: Sequence[tuple[str, str]], template: str, chat: bool, max_length: int,
    answer_prefix: str = "",
) -> list[list[int]]:
    """Token ids of each row's rating prompt, ending where the rating is to be read."""
    overhead = len(tokenizer(template.format(instruction="", response=""),
                             add_special_tokens=False)["input_ids"]) + 32
    budget = max(16, max_length - overhead)
    out = []
    for instruction, response in rows:
        instruction, response = _fit(tokenizer, instruction, response, budget)
        text = template.format(instruction=instruction, response=response)
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        text += answer_prefix
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"][-max_length:]))
    return out


def rating_token_ids(tokenizer: Any) -> list[int]:
    """The single token of each rating "1".."6"; an error for a tokenizer that splits them."""
    ids = []
    for r in RATINGS:
        enc = tokenizer(r, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"the judge needs each rating to be one token; {r!r} is {enc}")
        ids.append(int(enc[0]))
    return ids


def rating_scores(scorer: Any, prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """Per prompt: ``[expected rating, probability mass on the rating tokens]``.

    Prompts are length-sorted into right-padded batches; one forward pass each, logits only
    from the shortest prompt's end on, the full distribution read at each prompt's last token.
    """
    import torch

    rating_ids = torch.as_tensor(rating_token_ids(scorer.tokenizer))
    values = torch.arange(1, len(RATINGS) + 1, dtype=torch.float64)
    lengths = np.asarray([len(p) for p in prompts])
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((len(prompts), 2), dtype=np.float64)
    pad = int(getattr(scorer.tokenizer, "pad_token_id", None) or scorer.prefix_id or 0)
    start = 0
    while start < len(order):
        width = int(lengths[order[start]])
        rows = max(1, scorer.tokens_per_batch // max(width, 1))
        batch = order[start : start + rows]
        start += len(batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, idx in enumerate(batch):
            ids[row, : lengths[idx]] = torch.as_tensor(prompts[idx], dtype=torch.long)
            mask[row, : lengths[idx]] = 1
        last_cols = lengths[batch] - 1
        _, last, _ = scorer.logprobs_with_cache(
            ids, attention_mask=mask, position_ids=torch.arange(width).expand(len(batch), width),
            score_from=int(last_cols.min()), last_cols=torch.as_tensor(last_cols),
        )
        logp = last.double()[:, rating_ids]
        mass = logp.exp().sum(1)
        probs = torch.softmax(logp, dim=1)
        out[batch, 0] = (probs * values).sum(1).numpy()
        out[batch, 1] = mass.numpy()
    return out


@register_step
class Judge(TurnScoringStep):
    """Keep the rows an LM judge rates highest (expected rating over "1".."6").

    Args:
        keep: rows to keep (a fraction of the step's input rows, or a count), best first.
        min_score: drop rows whose expected rating is below this, whatever the budget.
        template: the rating prompt, with ``{instruction}`` and ``{response}``.
        chat: send the prompt through the tokenizer's chat template (for chat models).
        answer_prefix: text that opens the judge's answer, right before the rating is read;
            ``"Rating: "`` makes a small chat model answer with a digit (SmolLM2-135M put 0.11
            of its probability on "1".."6" without it, 0.83 with it, on T0 rows).
        max_length: token window of one rating prompt.
        model: causal LM id or folder; ``None`` uses the run's shared scorer (SmolLM2).
        cache: ``True`` (the datadiet cache), a folder, or ``False``.

    Removed rows: ``judge:below-budget``, ``judge:below-min-score``. Scores: the expected
    rating (1 to 6) of every row; the stats give the mean probability mass the model put on the
    rating tokens at all (low mass means the template does not make it answer with a digit).
    """

    name = "judge"
    maps_survivors = True  # a model reads every row it maps
    writes_score = True
    needs_instruction_data = True

    def __init__(
        self,
        *,
        keep: float | int = 0.5,
        min_score: float | None = None,
        template: str = DEFAULT_TEMPLATE,
        chat: bool = True,
        answer_prefix: str = "Rating: ",
        max_length: int = 1024,
        model: str | None = None,
        cache: bool | str = True,
    ) -> None:
        validate_keep(keep)
        if not isinstance(template, str):
            raise ValueError("template must be a string with {instruction} and {response}")
        try:
            filled = template.format(instruction="\0I", response="\0R")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template may use only {{instruction}} and {{response}}: {exc}") from exc
        if "\0I" not in filled or "\0R" not in filled:
            raise ValueError("template must contain both {instruction} and {response}")
        if min_score is not None and not 1 <= float(min_score) <= len(RATINGS):
            raise ValueError(f"min_score must be in [1, {len(RATINGS)}], got {min_score!r}")
        validate_scoring_options(max_length, cache, min_length=64)
        self.keep = keep
        self.min_score = None if min_score is None else float(min_score)
        self.template = template
        self.chat = bool(chat)
        if not isinstance(answer_prefix, str):
            raise ValueError(f"answer_prefix must be a string, got {answer_prefix!r}")
        self.answer_prefix = answer_prefix
        self.max_length = max_length
        self.model = model
        self.cache = cache

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's expected rating and rating mass (through the score cache), whether
        this map scored it, and whether the prompts went through the chat template."""
        n = batch.num_rows
        if n == 0:
            return {"rating": np.empty((0, 2)), "scored": np.empty(0, np.int8),
                    "chat": np.empty(0, np.int8)}
        rows = [conversation[-1] for conversation in view.turns(batch, self.name)]
        with view.lm_scorer(self.model) as scorer:
            chat = uses_chat_template(self.chat, scorer)
            recipe = hashlib.blake2b(f"{chat}\0{self.answer_prefix}\0{self.template}".encode(),
                                     digest_size=8).hexdigest()
            cache = open_cache(self.cache, scorer_identity(scorer), f"{JUDGE_METHOD}:{recipe}",
                               self.max_length)
            costs = np.asarray([min((len(p) + len(r)) // 4 + 64, self.max_length)
                                for p, r in rows])
            try:
                with scorer.ledger.stage(scorer.stage):
                    values, computed = cached_scores(
                        [turns_key([pair]) for pair in rows],
                        lambda idx: rating_scores(scorer, judge_prompts(
                            scorer.tokenizer, [rows[i] for i in idx], self.template, chat,
                            self.max_length, self.answer_prefix)),
                        cache, width=2, costs=costs, chunk_cost=8 * scorer.tokens_per_batch,
                    )
            finally:
                if cache is not None:
                    cache.close()
        scored = np.zeros(n, np.int8)
        scored[:computed] = 1  # a count per batch, spread so that it sums
        return {"rating": values, "scored": scored, "chat": np.full(n, int(chat), np.int8)}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        values = np.asarray(features["rating"], dtype=np.float64)
        n = len(values)
        if n == 0:
            return Selection.keep_all(0)
        score = values[:, 0]
        kinds = np.full(n, "", dtype=object)
        if self.min_score is not None:
            kinds[score < self.min_score] = BELOW_MIN
        eligible = np.flatnonzero(kinds == "")
        k = min(resolve_keep(self.keep, n), len(eligible))
        ranked = eligible[np.argsort(-score[eligible], kind="stable")]
        kinds[ranked[k:]] = BELOW_BUDGET
        keep = kinds == ""
        computed = int(np.sum(features["scored"]))
        stats = {"model": self._identity, "chat_template": bool(np.any(features["chat"])),
                 "max_length": self.max_length,
                 "rows_scored": computed, "cache_hits": n - computed, "k": int(k),
                 "mean_score": float(score.mean()),
                 "mean_rating_mass": float(values[:, 1].mean())}
        return Selection.from_mask(keep, kinds, scores=score, stats=stats)
