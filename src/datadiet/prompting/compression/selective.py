"""``selective``: Selective Context (Li et al. 2023) -- drop what the model already expects.

Self-information ``-log p(token | everything before it)`` of every token, from one batched pass of
the project's LM scorer over the whole prompt (long prompts in overlapping chunks), is summed into
lexical units -- tokens, words, phrases or sentences -- and the least informative units go first.
Units are ranked by information *per token* (their self-information divided by their length):
under a token budget that is the greedy answer to "which units buy the most information per
token spent", whereas the paper's percentile over unit sums would favour long units.

Phrases are approximated without a parser (the paper uses spaCy noun chunks): runs of words
between punctuation marks, at most ``max_phrase_words`` long.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datadiet.prompting.compression.base import Job, Plan, Working, working_text

_SPLITTERS = {
    "word": re.compile(r"\s*\S+"),
    "sentence": re.compile(r"\s*[^.!?\n]+(?:[.!?]+|\n+|$)|\s*[.!?\n]+"),
}
_PHRASE_BREAK = re.compile(r"\s*[^\s\w]+\s*|\s*\n")


@dataclass
class SelectiveOptions:
    """granularity: "token", "word", "phrase" or "sentence"; chunk/overlap: tokens per scored
    chunk and the context carried between chunks for prompts longer than the scorer's window."""

    granularity: str = "phrase"
    max_phrase_words: int = 4
    overlap: int = 64


def lexical_spans(text: str, granularity: str, max_phrase_words: int = 4) -> list[tuple[int, int]]:
    """Character ranges of the lexical units of ``text`` (contiguous, covering it)."""
    if granularity == "token":
        return []
    if granularity in _SPLITTERS:
        spans = [(m.start(), m.end()) for m in _SPLITTERS[granularity].finditer(text) if m.end() > m.start()]
    elif granularity == "phrase":
        spans = []
        words = [(m.start(), m.end()) for m in _SPLITTERS["word"].finditer(text)]
        start, n_words = None, 0
        for s, e in words:
            if start is None:
                start, n_words = s, 0
            n_words += 1
            piece = text[s:e]
            if n_words >= max_phrase_words or _PHRASE_BREAK.search(piece):
                spans.append((start, e))
                start = None
        if start is not None:
            spans.append((start, words[-1][1]))
    else:
        raise ValueError(f"granularity must be token, word, phrase or sentence, not {granularity!r}")
    # make them contiguous: gaps join the next unit, the tail joins the last
    out, pos = [], 0
    for _s, e in spans:
        if e > pos:
            out.append((pos, e))
            pos = e
    if pos < len(text):
        if out:
            out[-1] = (out[-1][0], len(text))
        else:
            out.append((0, len(text)))
    return out


class SelectiveMethod:
    """Self-information filtering over lexical units, one batched scoring pass for all prompts."""

    name = "selective"

    def __init__(self, scorer: object, options: SelectiveOptions | None = None) -> None:
        self.scorer = scorer
        self.options = options or SelectiveOptions()

    def _surprisal(self, works: Sequence[Working]) -> list[np.ndarray]:
        """Self-information per token, long texts scored in overlapping chunks (one batch)."""
        scorer = self.scorer
        limit = int(scorer.max_length) - 1  # type: ignore[attr-defined]
        overlap = min(self.options.overlap, limit // 4)
        seqs, where = [], []
        for j, w in enumerate(works):
            ids = w.units.token_ids
            a = 0
            while a < len(ids):
                ctx = 0 if a == 0 else overlap
                b = min(len(ids), a + limit - ctx)
                seqs.append([int(scorer.prefix_id), *map(int, ids[a - ctx : b])])  # type: ignore[attr-defined]
                where.append((j, a, b, ctx))
                a = b
        out = [np.full(len(w.units.token_ids), np.nan) for w in works]
        if seqs:
            for (j, a, b, ctx), lp in zip(where, scorer.score_ids(seqs), strict=True):  # type: ignore[attr-defined]
                out[j][a:b] = -lp[ctx : ctx + (b - a)]
        return out

    def plan(self, jobs: Sequence[Job]) -> list[Plan]:
        tokenizer = self.scorer.tokenizer  # type: ignore[attr-defined]
        works = [working_text(job, range(len(job.passages)), tokenizer) for job in jobs]
        surprisal = self._surprisal(works)
        plans = []
        for job, work, s in zip(jobs, works, surprisal, strict=True):
            u = work.units
            own = u.unit_scores(s, fill=0.0)
            # lexical unit of each token-unit; score = mean self-information per token
            spans = lexical_spans(u.text, self.options.granularity, self.options.max_phrase_words)
            if spans:
                starts = np.asarray([a for a, _ in spans])
                lex = np.searchsorted(starts, u.starts, side="right") - 1
            else:
                lex = np.arange(len(u))
            n_lex = int(lex.max()) + 1 if len(lex) else 0
            info = np.bincount(lex, weights=own * u.n_tokens, minlength=n_lex)
            size = np.bincount(lex, weights=u.n_tokens.astype(float), minlength=n_lex)
            density = np.divide(info, size, out=np.zeros_like(info), where=size > 0)
            # ties inside a lexical unit broken by the unit's own surprisal (tiny weight)
            priority = density[lex] + 1e-3 * own
            priority[u.mandatory] = np.inf
            keep = self._initial(job, work, density, lex)
            plans.append(Plan(list(range(len(job.passages))), u, keep, priority, work.pieces,
                              info={"granularity": self.options.granularity}))
        return plans

    @staticmethod
    def _initial(job: Job, work: Working, density: np.ndarray, lex: np.ndarray) -> np.ndarray:
        """Whole lexical units, densest first, within the budget (in scoring tokens)."""
        u = work.units
        keep = u.mandatory.copy()
        total = int(u.n_tokens.sum())
        budget = job.target * total / max(1, job.counter(u.text))
        spent = float(u.n_tokens[keep].sum())
        free_tokens = np.bincount(lex, weights=(u.n_tokens * ~u.mandatory).astype(float),
                                  minlength=len(density))
        for g in np.argsort(-density, kind="stable"):
            if free_tokens[g] == 0:
                continue
            if spent + free_tokens[g] > budget:
                continue
            keep[lex == g] = True
            spent += free_tokens[g]
        return keep
