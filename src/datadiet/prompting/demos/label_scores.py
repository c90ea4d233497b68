"""Log-probabilities of label words after prompts, through the one scorer's KV-cached pass.

Why a tree of cached passes instead of scoring every "prompt + label" string: a prediction needs
``log p(word | prompt)`` for every label word, and calibration (three content-free queries) and
GlobalE/LocalE (many probe queries after each candidate ordering) put many queries after the same
demonstrations. So each prefix (instruction + demonstrations) runs once; its cache is repeated
for its suffixes (queries), and the query's cache for its label words. The first token of every
label word comes from the query pass's last position, so single-token verbalizers -- the presets'
words all are, for SmolLM2 -- need no label pass at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datadiet.pipeline.models.scoring import LMScorer


def _tokenize(scorer: LMScorer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without the scorer's boundary token."""
    if not texts:
        return []
    return [list(e["ids"][1:]) for e in scorer.encode(list(texts))]


class LabelScorer:
    """``log p(label word | prefix + suffix)`` for every label, many prompts at a time.

    Args:
        scorer: the one :class:`~datadiet.pipeline.models.scoring.LMScorer`.
        continuations: the text scored for each label after a query (" positive", ...).
        tokens_per_pass: cached-token budget of one pass, rows times width (bounds memory:
            the KV cache of one row-token is ~46 KB for SmolLM2-135M).
    """

    def __init__(self, scorer: LMScorer, continuations: Sequence[str], *,
                 tokens_per_pass: int | None = None) -> None:
        if not continuations:
            raise ValueError("LabelScorer: no labels to score")
        self.scorer = scorer
        self.label_ids = _tokenize(scorer, continuations)
        if any(not ids for ids in self.label_ids):
            raise ValueError(f"a label continuation is empty after tokenisation: {continuations}")
        self.first = [ids[0] for ids in self.label_ids]
        self.multi = [j for j, ids in enumerate(self.label_ids) if len(ids) > 1]
        self.tokens_per_pass = tokens_per_pass or getattr(scorer, "tokens_per_batch", 4096)
        self.prefix_id = scorer.prefix_id

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return _tokenize(self.scorer, texts)

    def prefix_ids(self, text: str) -> list[int]:
        """A prefix's ids, the scorer's boundary token first (so a prefix is never empty)."""
        return [self.prefix_id, *(self.encode([text])[0] if text else [])]

    def score_texts(self, prefixes: Sequence[str], suffixes: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """:meth:`score` on texts; ``suffixes[i]`` are the queries that follow ``prefixes[i]``."""
        flat = [s for group in suffixes for s in group]
        ids = iter(self.encode(flat))
        return self.score([self.prefix_ids(p) for p in prefixes],
                          [[next(ids) for _ in group] for group in suffixes])

    def score(self, prefixes: Sequence[Sequence[int]],
              suffixes: Sequence[Sequence[Sequence[int]]]) -> list[np.ndarray]:
        """Per prefix, an array ``(len(suffixes[i]), n_labels)`` of label-word log-probs."""
        if len(prefixes) != len(suffixes):
            raise ValueError("score: one list of suffixes per prefix")
        if any(not s for group in suffixes for s in group) or any(not p for p in prefixes):
            raise ValueError("score: prefixes and suffixes must not be empty")
        n_labels = len(self.label_ids)
        out = [np.zeros((len(g), n_labels), dtype=np.float64) for g in suffixes]
        longest_label = max(len(ids) for ids in self.label_ids)
        fan = max(1, len(self.multi))
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        chunk: list[int] = []
        cost = 0
        for i in order:
            rows = max(1, len(suffixes[i]))
            width = len(prefixes[i]) + max((len(s) for s in suffixes[i]), default=0) + longest_label
            need = rows * fan * width
            if chunk and cost + need > self.tokens_per_pass:
                self._score_chunk(chunk, prefixes, suffixes, out)
                chunk, cost = [], 0
            chunk.append(i)
            cost += need
        if chunk:
            self._score_chunk(chunk, prefixes, suffixes, out)
        return out

    def _score_chunk(self, chunk: list[int], prefixes: Sequence[Sequence[int]],
                     suffixes: Sequence[Sequence[Sequence[int]]], out: list[np.ndarray]) -> None:
        import torch

        chunk = [i for i in chunk if len(suffixes[i])]
        if not chunk:
            return
        pre_ids, pre_mask, pre_pos = _right_padded([prefixes[i] for i in chunk], self.scorer)
        pre_len = pre_mask.sum(1)
        # prefix pass: only the cache is needed (one logit column kept, ignored)
        width = pre_ids.shape[1]
        _, _, cache = self.scorer.logprobs_with_cache(
            pre_ids, attention_mask=pre_mask, position_ids=pre_pos, score_from=width - 1)
        owner = [r for r, i in enumerate(chunk) for _ in suffixes[i]]
        where = [(i, j) for i in chunk for j in range(len(suffixes[i]))]
        cache.batch_select_indices(torch.as_tensor(owner, dtype=torch.long))
        suf_ids, suf_mask, suf_pos = _right_padded(
            [suffixes[i][j] for i, j in where], self.scorer, start=pre_len[owner])
        suf_len = suf_mask.sum(1)
        last_cols = (suf_len - 1).tolist()
        mask = torch.cat([pre_mask[owner], suf_mask], dim=1)
        _, last, cache = self.scorer.logprobs_with_cache(
            suf_ids, attention_mask=mask, position_ids=suf_pos, past_key_values=cache,
            score_from=min(last_cols), last_cols=last_cols)
        scores = last[:, self.first].double().numpy()
        if self.multi:
            scores += self._label_pass(cache, mask, pre_len[owner] + suf_len, len(where))
        for row, (i, j) in enumerate(where):
            out[i][j] = scores[row]

    def _label_pass(self, cache: Any, mask: Any, lengths: Any, n_rows: int) -> np.ndarray:
        """Log-probs of the 2nd.. tokens of multi-token labels, one pass over all rows x labels."""
        import torch

        fan = len(self.multi)
        cache.batch_select_indices(torch.arange(n_rows).repeat_interleave(fan))
        labels = [self.label_ids[j] for j in self.multi]
        seqs = [labels[m] for _ in range(n_rows) for m in range(fan)]
        ids, lab_mask, pos = _right_padded(seqs, self.scorer,
                                           start=lengths.repeat_interleave(fan))
        logprobs, _, _ = self.scorer.logprobs_with_cache(
            ids, attention_mask=torch.cat([mask.repeat_interleave(fan, dim=0), lab_mask], dim=1),
            position_ids=pos, past_key_values=cache, score_from=0)
        logprobs = logprobs.double().numpy()
        extra = np.zeros((n_rows, len(self.label_ids)), dtype=np.float64)
        for row in range(n_rows):
            for m, j in enumerate(self.multi):
                n = len(self.label_ids[j])
                extra[row, j] = logprobs[row * fan + m, : n - 1].sum()
        return extra


def _right_padded(seqs: Sequence[Sequence[int]], scorer: LMScorer, start: Any = None) -> tuple[Any, Any, Any]:
    """``(ids, mask, positions)`` of right-padded rows; positions continue from ``start``."""
    import torch

    width = max(len(s) for s in seqs)
    pad = scorer.tokenizer.pad_token_id
    pad = scorer.prefix_id if pad is None else pad
    ids = torch.full((len(seqs), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    offset = torch.zeros(len(seqs), dtype=torch.long) if start is None else torch.as_tensor(start)
    positions = offset[:, None] + torch.arange(width)[None, :]
    return ids, mask, positions


def label_probabilities(logprobs: np.ndarray) -> np.ndarray:
    """Normalise label-word log-probs into a distribution over the labels (rows sum to 1)."""
    shifted = logprobs - logprobs.max(axis=-1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=-1, keepdims=True)
