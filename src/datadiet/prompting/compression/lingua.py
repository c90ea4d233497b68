"""``lingua``: the LLMLingua family (Jiang et al. 2023; LongLLMLingua, Jiang et al. 2024).

Coarse to fine, as in the papers, written for this project's one LM scorer:

1. **Budget controller (coarse level).** The context's passages (list segments; for a string,
   its paragraphs and the sentences of long paragraphs, see ``segments.py``) are ranked -- by
   MiniLM similarity to the question or by LongLLMLingua's ``log p(question | passage)``
   (``ranking.py``), or without a question by their own perplexity -- and whole passages are
   kept, best first, until the budget is covered. A passage that carries a protected span is
   never dropped here: if it is not ranked in, it keeps only its protected spans.
2. **Iterative token-level compression.** The kept text is cut into windows. Each window is
   scored in *one* forward pass conditioned, through the KV cache, on what was *kept* of the
   windows before it (not on the original text): a token is judged by its surprisal given the
   compressed prefix the target model will actually see. The window then keeps its most
   surprising tokens within its share of the budget, and its dropped tokens are masked out of
   the cache. Unlike llmlingua, kept tokens are not re-encoded on the compressed prefix: their
   cache entries from their own window are reused, so the token level costs one pass over the
   kept passages instead of about two. The cache never grows past ``context`` positions: when
   the next window would not fit, it is rebuilt from the last ``window`` kept tokens, so the
   cost is linear in the prompt's length and memory is bounded, whatever the length.
   Optionally the score is *contrastive* (LongLLMLingua): surprisal without the question minus
   surprisal after it, i.e. how much the question makes a token expected -- computed as a second
   row of the same batched pass.

Where this departs from the papers: the coarse level keeps whole passages up to the budget
(plus ``segment_slack``) instead of LongLLMLingua's rank-dependent compression ratio per
document; reused cache entries (above); and the exact budget fit that follows every method.

Prompts of a batch are compressed together: their windows share forward passes, padded rows
share one KV cache (explicit positions and a per-row mask keep them independent).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datadiet.prompting.compression.base import Job, Plan, Working, joined_text, working_text
from datadiet.prompting.compression.protect import overlapping
from datadiet.prompting.compression.ranking import (
    DEFAULT_QUESTION_RANKER,
    embedder,
    rank_passages,
)

# prompts with more scored tokens than this show a progress bar unless asked not to
PROGRESS_FROM_TOKENS = 8192


@dataclass
class LinguaOptions:
    """Knobs of the lingua method (defaults chosen on the needle test and SST-2 prompts).

    window: tokens per iterative window; smaller windows condition more on the compressed
        prefix (closer to the paper), larger ones are faster (fewer passes).
    context: the most positions the KV cache holds (kept and masked tokens); past it, the cache
        is rebuilt from the last ``window`` kept tokens. Capped at the model's context.
    contrastive: question-conditioned contrastive surprisal for the token level.
    segment_filter: drop whole passages first (only when there are several).
    rank: "auto" (the default question ranker with a question, ppl without), "lm", "embedding",
        "ppl", or "order" (keep the last passages first -- e.g. kNN demonstrations sorted
        nearest-last).
    segment_slack: after the passage that crosses the budget, keep further passages only
        within ``(1 + slack)·budget`` tokens (more choice for the token level, more work).
    """

    window: int = 256
    context: int = 2048
    contrastive: bool = False
    segment_filter: bool = True
    rank: str = "auto"
    segment_slack: float = 0.1


@dataclass
class Selection:
    """The coarse level's decision for one job."""

    kept: list[int]  # passages in the working text
    ranked_in: list[int]  # of those, the ones kept for their content (the rest: protection only)
    order: list[int] | None = None


def select_passages(job: Job, order: Sequence[int] | None, slack: float) -> Selection:
    """Keep whole passages, best first, until the context budget is covered.

    Pinned passages (``keep_segments``) come first. A passage carrying a protected span is
    always kept (``protect_scope="everywhere"``), but only its protected text counts against the
    budget unless it is also ranked in; with ``protect_scope="kept_passages"`` it may be dropped
    whole, and is skipped if its protected text would not fit. The passage that crosses the
    budget is kept (so the token level can meet it from below, with a small margin for
    re-tokenisation at the seams); later ones only while the total stays within ``(1 + slack)``
    times the budget. A small slack keeps the token level's work -- one forward pass over the
    kept text -- close to the budget itself.
    """
    n = len(job.passages)
    if order is None or n < 2:
        return Selection(list(range(n)), list(range(n)), None)
    counter = job.counter
    gap_cost = counter(job.options.separator) if job.options.separator else 0
    fixed = sum(counter(p) for p in job.fixed_parts) + gap_cost * len(job.fixed_parts)
    budget = max(0, job.target - fixed)
    pinned = [i for i in order if job.passages[i].segment in job.options.keep_segments]

    def protection(i: int) -> int:
        part = job.passages[i]
        spans = overlapping(job.protected, part.start, part.end)
        return gap_cost + sum(counter(job.original[a:b]) for a, b in spans) if spans else 0

    # protection-only passages: kept for their protected spans whatever their rank
    protected_cost = {i: protection(i) for i in job.forced if i not in pinned}
    ranked_in = list(pinned)
    covered = sum(counter(job.passage_text(i)) + gap_cost for i in pinned)
    covered += sum(protected_cost.values())
    # what must survive so far (for protect_scope="kept_passages": grows with each passage)
    mandatory = fixed + sum(protection(i) for i in pinned) + sum(protected_cost.values())
    enough = budget * 1.02 + 2  # a margin for re-tokenisation at the seams
    remaining = [i for i in order if i not in pinned]

    def fits_protection(i: int) -> bool:
        nonlocal mandatory
        if i in protected_cost or not job.protected_passage[i]:
            return True
        need = protection(i)
        if mandatory + need > job.target:
            return False
        mandatory += need
        return True

    while remaining:
        i = remaining[0]
        cost = counter(job.passage_text(i)) + gap_cost - protected_cost.get(i, 0)
        if covered >= enough and covered + cost > budget * (1 + slack):
            break
        remaining.pop(0)
        if fits_protection(i):
            ranked_in.append(i)
            covered += cost
    # the passages were counted one by one; the joined text can count fewer (a gap that merges
    # with the next word): check, and take the next-ranked passages while it falls short
    while remaining:
        have = counter(joined_text(job, ranked_in)) + sum(
            c for i, c in protected_cost.items() if i not in ranked_in)
        short = job.target * 1.02 + 2 - have
        if short <= 0:
            break
        while remaining and short > 0:
            i = remaining.pop(0)
            if fits_protection(i):
                ranked_in.append(i)
                short -= counter(job.passage_text(i)) + gap_cost - protected_cost.get(i, 0)
    return Selection(sorted(set(ranked_in) | job.forced), sorted(ranked_in), list(order))


@dataclass
class _JobTokens:
    """Token-level bookkeeping of one job: windows, quotas, scores and decisions."""

    work: Working
    windows: list[tuple[int, int]]  # unit ranges of the scored (non-tail) units
    quotas: list[int]  # free scoring tokens each window may keep
    first_token: np.ndarray  # per unit (and one past the end): index of its first token
    eligible: np.ndarray  # per unit: may be kept for its score (not protection-only)
    words: np.ndarray  # per unit: its word (words are decided whole)
    surprisal: np.ndarray  # per token, -log p given the kept prefix
    conditioned: np.ndarray | None  # per token, the same after the question (contrastive)
    keep: np.ndarray = field(init=False)  # per unit
    token_keep: np.ndarray = field(init=False)  # per token
    cache_restarts: int = 0

    def __post_init__(self) -> None:
        self.keep = self.work.units.mandatory.copy()
        self.token_keep = np.zeros(len(self.work.units.token_ids), dtype=bool)

    def token_span(self, step: int) -> tuple[int, int]:
        lo, hi = self.windows[step]
        return int(self.first_token[lo]), int(self.first_token[hi])

    def token_scores(self, a: int, b: int) -> np.ndarray:
        if self.conditioned is None:
            return self.surprisal[a:b]
        return self.surprisal[a:b] - self.conditioned[a:b]

    def decide(self, step: int) -> None:
        """Keep the window's highest-scoring eligible words within its quota and mark their
        tokens kept (the rest get masked out of the cache). Touches this window only.

        A word scores as its most surprising unit: "harpsichord" is worth keeping if "harps" is
        surprising, however predictable "ichord" is after it -- and it is kept whole.
        """
        u = self.work.units
        lo, hi = self.windows[step]
        a, b = self.token_span(step)
        local = u.token_unit[a:b] - lo
        tok = self.token_scores(a, b)
        ok = np.isfinite(tok)
        total = np.bincount(local[ok], weights=tok[ok], minlength=hi - lo)
        count = np.bincount(local[ok], minlength=hi - lo)
        free = self.eligible[lo:hi] & ~u.mandatory[lo:hi]
        score = np.where((count > 0) & free, total / np.maximum(count, 1), -np.inf)
        words = self.words[lo:hi] - self.words[lo]
        bounds = np.flatnonzero(np.diff(words)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.append(bounds, hi - lo)
        word_score = np.maximum.reduceat(score, starts)
        word_cost = np.add.reduceat(u.n_tokens[lo:hi] * free, starts)
        quota, spent = self.quotas[step], 0
        for w in np.argsort(-word_score, kind="stable"):
            if spent >= quota or not np.isfinite(word_score[w]):
                break
            if word_cost[w] and spent + word_cost[w] <= quota:
                self.keep[lo + starts[w] : lo + ends[w]] |= free[starts[w] : ends[w]]
                spent += int(word_cost[w])
        kept_units = np.flatnonzero(self.keep[lo:hi]) + lo
        for k in kept_units:
            self.token_keep[self.first_token[k] : self.first_token[k + 1]] = True

    def priority(self) -> np.ndarray:
        """Per unit, for the budget fit: its word's score (so words come and go whole);
        mandatory units first, protection-only passages last."""
        u = self.work.units
        tok = self.token_scores(0, len(u.token_ids))
        s = u.unit_scores(tok, fill=-np.inf)
        s[~self.eligible | u.mandatory] = -np.inf
        word_best = np.full(int(self.words[-1]) + 1 if len(self.words) else 0, -np.inf)
        np.maximum.at(word_best, self.words, s)
        s = word_best[self.words]
        s[~self.eligible] = -np.inf
        s[u.mandatory] = np.inf
        return s


@dataclass
class _Row:
    """One sequence of the batched pass: a job's plain or question-conditioned view."""

    job: _JobTokens
    conditioned: bool
    head: list[int]  # tokens before the context: the boundary token (and the question)
    pending: list[int]  # tokens to enter the cache before the next window
    next_pos: int = 0  # the next position id
    carry: Any = None  # log-softmax predicting the next window's first token


class LinguaMethod:
    """Coarse-to-fine LLMLingua-style compression with a shared, batched KV-cached pass."""

    name = "lingua"

    def __init__(self, scorer: object, options: LinguaOptions | None = None) -> None:
        self.scorer = scorer
        self.options = options or LinguaOptions()
        rank = self.options.rank
        if rank == "auto":
            rank = DEFAULT_QUESTION_RANKER
        if self.options.segment_filter and rank == "embedding":
            embedder()  # load it now, so a call's ``seconds`` do not include model loading

    @property
    def drops_passages(self) -> bool:
        """Whether the coarse level may drop passages (what the feasibility check assumes)."""
        return self.options.segment_filter

    def plan(self, jobs: Sequence[Job]) -> list[Plan]:
        opt = self.options
        tokenizer = self.scorer.tokenizer  # type: ignore[attr-defined]
        orders = (rank_passages(jobs, opt.rank, self.scorer) if opt.segment_filter
                  else [None] * len(jobs))
        selections = [select_passages(job, order, opt.segment_slack)
                      for job, order in zip(jobs, orders, strict=True)]
        works = [working_text(job, sel.kept, tokenizer)
                 for job, sel in zip(jobs, selections, strict=True)]
        states = [self._prepare(job, work, sel)
                  for job, work, sel in zip(jobs, works, selections, strict=True)]
        self._score_windows(jobs, states)
        return [
            Plan(sel.kept, st.work.units, st.keep, st.priority(), st.work.pieces,
                 info={"passage_order": sel.order, "passages_ranked_in": sel.ranked_in,
                       "cache_restarts": st.cache_restarts})
            for sel, st in zip(selections, states, strict=True)
        ]

    def _prepare(self, job: Job, work: Working, selection: Selection) -> _JobTokens:
        u = work.units
        protection_only = sorted(set(selection.kept) - set(selection.ranked_in))
        eligible = ~np.isin(work.unit_passage, protection_only)
        words = u.word_ids()
        windows = self._windows(work, words)
        first_token = np.concatenate([[0], np.cumsum(u.n_tokens)]).astype(np.int64)
        contrastive = self.options.contrastive and bool(job.question)
        n_tok = len(u.token_ids)
        return _JobTokens(
            work=work, windows=windows, quotas=self._quotas(job, work, windows, eligible),
            first_token=first_token, eligible=eligible, words=words,
            surprisal=np.full(n_tok, np.nan),
            conditioned=np.full(n_tok, np.nan) if contrastive else None,
        )

    def _quotas(self, job: Job, work: Working, windows: list[tuple[int, int]],
                eligible: np.ndarray) -> list[int]:
        """Free tokens each window may keep, summing to the (scoring-token) free budget."""
        u = work.units
        total_scoring = int(u.n_tokens.sum())
        total_count = max(1, job.counter(u.text))
        target_scoring = job.target * total_scoring / total_count
        free_budget = max(0.0, target_scoring - float(u.n_tokens[u.mandatory].sum()))
        free = eligible & ~u.mandatory
        free_tokens = [int(u.n_tokens[lo:hi][free[lo:hi]].sum()) for lo, hi in windows]
        frac = min(1.0, free_budget / max(1, sum(free_tokens)))
        quotas, carry = [], 0.0
        for f in free_tokens:
            want = frac * f + carry
            q = int(min(f, max(0, round(want))))
            carry = want - q
            quotas.append(q)
        return quotas

    def _windows(self, work: Working, words: np.ndarray) -> list[tuple[int, int]]:
        """Unit ranges of about ``window`` tokens each, over the scored (non-tail) units, cut
        between words."""
        u, size = work.units, max(8, self.options.window)
        out, lo, acc = [], 0, 0
        for k in range(work.tail_unit):
            acc += int(u.n_tokens[k])
            if acc >= size and (k + 1 >= len(words) or words[k + 1] != words[k]):
                out.append((lo, k + 1))
                lo, acc = k + 1, 0
        if lo < work.tail_unit:
            out.append((lo, work.tail_unit))
        return out

    def _rows(self, jobs: Sequence[Job], states: Sequence[_JobTokens]) -> list[_Row]:
        scorer = self.scorer
        prefix = int(scorer.prefix_id)  # type: ignore[attr-defined]
        rows = []
        for job, st in zip(jobs, states, strict=True):
            if not st.windows:
                continue
            rows.append(_Row(st, False, [prefix], [prefix]))
            if st.conditioned is not None:
                q = scorer.tokenizer(job.question + job.options.separator,  # type: ignore[attr-defined]
                                     add_special_tokens=False)["input_ids"]
                head = [prefix, *q[: self.options.context // 4]]
                rows.append(_Row(st, True, head, list(head)))
        return rows

    def _score_windows(self, jobs: Sequence[Job], states: Sequence[_JobTokens]) -> None:
        """Score and decide window by window: one forward pass per window for all rows.

        The cache keeps every window's keys and values, but after the decision the dropped
        tokens are masked out, so later windows attend to the kept tokens only. The kept
        tokens' entries are reused as computed in their own window instead of being recomputed
        on the compressed prefix (llmlingua's way): that makes the whole token level one pass
        over the kept passages. When the next window would take the cache past ``context``
        positions (or a row leaves a cache that cannot drop rows), every row starts a fresh
        cache from its head and its last ``window`` kept tokens, positions from 0.
        """
        import torch
        from tqdm.auto import tqdm

        scorer = self.scorer
        pad = int(scorer.tokenizer.pad_token_id)  # type: ignore[attr-defined]
        rows = self._rows(jobs, states)
        context = min(self.options.context, scorer.max_context or self.options.context)  # type: ignore[attr-defined]
        total = sum(len(r.job.work.units.token_ids) for r in rows if not r.conditioned)
        show = jobs[0].options.progress if jobs else False
        bar = tqdm(total=total, unit="tok", desc="compressing", file=sys.stderr,
                   disable=not (show if show is not None else total > PROGRESS_FROM_TOKENS))
        cache: Any = None
        cache_mask = torch.zeros((len(rows), 0), dtype=torch.long)
        restart = False
        step = 0
        while rows:
            spans = [r.job.token_span(step) for r in rows]
            width = max(b - a for a, b in spans)
            longest_pending = max(len(r.pending) for r in rows)
            if restart or (cache is not None and
                           cache_mask.shape[1] + longest_pending + width > context):
                for r, (a, _) in zip(rows, spans, strict=True):
                    kept = r.job.work.units.token_ids[:a][r.job.token_keep[:a]]
                    r.pending = [*r.head, *map(int, kept[-self.options.window:])]
                    r.next_pos = 0
                    r.job.cache_restarts += not r.conditioned
                cache, restart = None, False
                cache_mask = torch.zeros((len(rows), 0), dtype=torch.long)
            n_pending = max(len(r.pending) for r in rows)
            ids = torch.full((len(rows), n_pending + width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            pos = torch.zeros_like(ids)
            last_cols = []
            for i, (r, (a, b)) in enumerate(zip(rows, spans, strict=True)):
                n_p, n_w = len(r.pending), b - a
                if n_p:
                    ids[i, n_pending - n_p : n_pending] = torch.as_tensor(r.pending)
                    mask[i, n_pending - n_p : n_pending] = 1
                    pos[i, n_pending - n_p : n_pending] = torch.arange(r.next_pos, r.next_pos + n_p)
                ids[i, n_pending : n_pending + n_w] = torch.as_tensor(r.job.work.units.token_ids[a:b])
                mask[i, n_pending : n_pending + n_w] = 1
                pos[i, n_pending : n_pending + n_w] = torch.arange(r.next_pos + n_p,
                                                                   r.next_pos + n_p + n_w)
                last_cols.append(n_pending + n_w - 1)
            logprobs, last, cache = scorer.logprobs_with_cache(  # type: ignore[attr-defined]
                ids, attention_mask=torch.cat([cache_mask, mask], dim=1), position_ids=pos,
                past_key_values=cache, score_from=max(n_pending - 1, 0), last_cols=last_cols,
            )
            for i, (r, (a, b)) in enumerate(zip(rows, spans, strict=True)):
                self._record(r, i, a, b, n_pending, logprobs, last)
            for st in {id(r.job): r.job for r in rows}.values():
                st.decide(step)
            for i, (r, (a, b)) in enumerate(zip(rows, spans, strict=True)):
                # dropped tokens stay in the cache but are masked out from now on
                mask[i, n_pending : n_pending + (b - a)] = torch.as_tensor(
                    r.job.token_keep[a:b], dtype=torch.long)
                r.pending = []
            cache_mask = torch.cat([cache_mask, mask], dim=1)
            bar.update(sum(b - a for r, (a, b) in zip(rows, spans, strict=True)
                           if not r.conditioned))
            step += 1
            alive = [i for i, r in enumerate(rows) if step < len(r.job.windows)]
            if len(alive) < len(rows):
                rows = [rows[i] for i in alive]
                drop_rows = getattr(cache, "batch_select_indices", None)
                if rows and drop_rows is not None:
                    drop_rows(torch.as_tensor(alive))
                    cache_mask = cache_mask[alive]
                else:
                    restart = True
        bar.close()

    @staticmethod
    def _record(r: _Row, i: int, a: int, b: int, n_pending: int, logprobs: Any, last: Any) -> None:
        """Store row ``i``'s surprisal of window tokens ``a:b`` and its carry for the next."""
        n_w = b - a
        if n_w:
            if n_pending:  # logprobs[j] scores window token j (predicted from column P - 1 + j)
                lp = logprobs[i, :n_w].numpy().astype(np.float64)
            else:  # logprobs[j] scores window token j + 1; the first comes from the carry
                lp = np.empty(n_w, dtype=np.float64)
                lp[1:] = logprobs[i, : n_w - 1].numpy()
                lp[0] = float(r.carry[int(r.job.work.units.token_ids[a])])
            target = r.job.conditioned if r.conditioned else r.job.surprisal
            target[a:b] = -lp  # type: ignore[index]
        if n_pending or n_w:
            r.carry = last[i]
        r.next_pos += len(r.pending) + n_w
