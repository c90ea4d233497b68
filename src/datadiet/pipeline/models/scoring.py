"""The one batched LM scorer: per-token log-probabilities from a causal LM.

Perplexity filtering, IFD, prompt compression and ICL scoring all reduce to "log p(token | prefix)"
for many texts. Doing that in one place means one batching strategy (length-bucketed, by a token
budget rather than a row count, so a batch of long documents does not blow memory while short ones
still fill the batch), one truncation rule and one FLOP count in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datadiet.pipeline.ledger import Ledger, ModelShape
from datadiet.pipeline.models.loading import load_causal_lm


@dataclass
class TokenScores:
    """Scores of one text: its token ids and ``log p(token_i | tokens_<i)`` for i >= 1.

    ``logprobs[j]`` scores ``ids[j + 1]``; the first token has no prediction. ``offsets`` are the
    character spans of each id in the text (when the tokenizer can give them), which is what lets
    compression drop tokens without splitting a multi-byte character.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    offsets: np.ndarray | None = None

    @property
    def n_scored(self) -> int:
        return len(self.logprobs)

    @property
    def mean_nll(self) -> float:
        return float(-self.logprobs.mean()) if len(self.logprobs) else math.nan


class LMScorer:
    """Batched token log-probs from a causal LM (default: SmolLM2-135M-Instruct, offline).

    Args:
        model: a Hugging Face id, a local folder, or ``None`` for the default.
        max_length: sequences are truncated to this many tokens (documents longer than the
            model's context are scored on their head; say so in reports).
        tokens_per_batch: padded-token budget of one forward pass; batches are formed from
            length-sorted sequences so padding stays small.
        ledger / stage: where the spent tokens and FLOPs are recorded.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        max_length: int = 512,
        tokens_per_batch: int = 4096,
        device: str | None = None,
        ledger: Ledger | None = None,
        stage: str = "lm-scoring",
    ) -> None:
        self.model_name = model
        self.model, self.tokenizer = load_causal_lm(model, device)
        self.device = next(self.model.parameters()).device
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        self.ledger = ledger
        self.stage = stage
        self.shape = ModelShape.from_hf_config(self.model.config)
        # A document boundary token in front, so the first real token is scored too.
        tok = self.tokenizer
        self.prefix_id = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id

    # -- tokenisation ----------------------------------------------------------------------

    def encode(self, texts: Sequence[str], with_offsets: bool = False) -> list[dict]:
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_length - 1,
            return_offsets_mapping=with_offsets,
        )
        out = []
        for i in range(len(texts)):
            item = {"ids": [self.prefix_id, *enc["input_ids"][i]]}
            if with_offsets:
                item["offsets"] = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            out.append(item)
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- scoring ---------------------------------------------------------------------------

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        order = np.argsort(-lengths, kind="stable")
        batches, current, longest = [], [], 0
        for idx in order:
            longest_if_added = max(longest, int(lengths[idx]))
            if current and longest_if_added * (len(current) + 1) > self.tokens_per_batch:
                batches.append(np.asarray(current))
                current, longest_if_added = [], int(lengths[idx])
            current.append(idx)
            longest = longest_if_added
        if current:
            batches.append(np.asarray(current))
        return batches

    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Log-probs of each sequence's tokens 1..n given their prefixes (one array per sequence)."""
        import torch

        lengths = np.asarray([len(s) for s in sequences])
        results: list[np.ndarray | None] = [None] * len(sequences)
        pad = self.tokenizer.pad_token_id
        total_tokens, flops = 0, 0.0
        for batch in self._batches(lengths):
            width = int(lengths[batch].max())
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, idx in enumerate(batch):
                seq = torch.as_tensor(sequences[idx], dtype=torch.long)
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                picked = logp.gather(-1, ids[:, 1:, None]).squeeze(-1).cpu().numpy()
            for row, idx in enumerate(batch):
                n = int(lengths[idx])
                results[idx] = picked[row, : max(n - 1, 0)].astype(np.float32)
                total_tokens += n
                flops += self.shape.flops(n, n, training=False)
        if self.ledger is not None:
            self.ledger.add(self.stage, tokens=total_tokens, flops=flops)
        return results  # type: ignore[return-value]

    def token_logprobs(self, texts: Sequence[str], with_offsets: bool = False) -> list[TokenScores]:
        """Per-token scores of each text (the boundary token in front is not returned)."""
        encoded = self.encode(texts, with_offsets=with_offsets)
        scores = self.score_ids([e["ids"] for e in encoded])
        return [
            TokenScores(np.asarray(e["ids"][1:]), s, e.get("offsets"))
            for e, s in zip(encoded, scores, strict=True)
        ]

    def nll(self, texts: Sequence[str]) -> np.ndarray:
        """Mean negative log-likelihood per text (nats/token); NaN for an empty text."""
        return np.asarray([s.mean_nll for s in self.token_logprobs(texts)])

    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        return np.exp(self.nll(texts))

    def conditional_nll(
        self, prompts: Sequence[str], continuations: Sequence[str]
    ) -> np.ndarray:
        """Mean NLL of each continuation given its prompt (IFD's conditioned loss).

        The prompt is kept whole where possible: if prompt + continuation exceeds
        ``max_length``, the prompt is cut from the left so the continuation is still scored.
        """
        enc_p = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        enc_c = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
        seqs, starts = [], []
        for p, c in zip(enc_p, enc_c, strict=True):
            c = c[: self.max_length - 2]
            room = self.max_length - 1 - len(c)
            p = p[-room:] if room > 0 else []
            seqs.append([self.prefix_id, *p, *c])
            starts.append(len(p))  # logprobs index where the continuation starts
        scores = self.score_ids(seqs)
        return np.asarray(
            [
                float(-s[start:].mean()) if len(s) > start else math.nan
                for s, start in zip(scores, starts, strict=True)
            ]
        )

    def logprobs_with_cache(
        self,
        input_ids: Any,
        *,
        attention_mask: Any,
        position_ids: Any,
        past_key_values: Any = None,
        score_from: int = 0,
        last_cols: Any = None,
    ) -> tuple[Any, Any, Any]:
        """One forward pass that extends a KV cache (iterative compression, incremental scoring).

        Args:
            input_ids: ``(B, M)`` new tokens; rows may be padded anywhere (mask them out).
            attention_mask: ``(B, past + M)`` over cached and new positions; cached padding
                stays masked, so rows of different lengths share one cache.
            position_ids: ``(B, M)`` explicit positions (padding-independent RoPE).
            past_key_values: the cache to extend, or ``None`` to start one.
            score_from: first column whose next-token prediction is needed.
            last_cols: per row, a column (>= ``score_from``) whose full next-token distribution
                is returned; default ``score_from``.

        Returns:
            ``(logprobs, last, cache)``: ``logprobs[b, j]`` = log p(input[b, score_from+j+1]) for
            ``j < M - score_from - 1``; ``last[b]`` the full log-softmax ``(V,)`` at column
            ``last_cols[b]`` (the prediction for whatever text comes next); and the grown
            cache. Only the logits from ``score_from`` on are materialised.
        """
        import torch
        from transformers import DynamicCache

        if past_key_values is None:
            past_key_values = DynamicCache()
        past = int(attention_mask.shape[1] - input_ids.shape[1])
        keep = int(input_ids.shape[1] - score_from)
        kwargs = dict(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            past_key_values=past_key_values,
            use_cache=True,
        )
        with torch.inference_mode():
            try:
                out = self.model(**kwargs, logits_to_keep=keep)
            except TypeError:  # an architecture without logits_to_keep
                out = self.model(**kwargs)
            logits = out.logits[:, -keep:].float()
            targets = input_ids[:, score_from + 1 :].to(logits.device)
            logprobs = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
            for row in range(logits.shape[0]):  # one row at a time keeps (M, V) small
                lsm = torch.log_softmax(logits[row, : keep - 1], dim=-1)
                logprobs[row] = lsm.gather(-1, targets[row, :, None]).squeeze(-1)
            if last_cols is None:
                picked = logits[:, 0]
            else:
                cols = torch.as_tensor(last_cols, dtype=torch.long, device=logits.device)
                picked = logits[torch.arange(logits.shape[0], device=logits.device), cols - score_from]
            last = torch.log_softmax(picked, dim=-1)
        if self.ledger is not None:
            n_new = int(attention_mask[:, past:].sum())
            self.ledger.add(
                self.stage, tokens=n_new,
                flops=self.shape.flops(n_new, past + int(input_ids.shape[1]), training=False),
            )
        return logprobs.cpu(), last.cpu(), out.past_key_values
