"""``lingua``: the LLMLingua family (Jiang et al. 2023; LongLLMLingua, Jiang et al. 2024).

Coarse to fine, as in the papers, written for this project's one LM scorer:

1. **Budget controller.** With several segments (demonstrations, documents), rank them -- by
   embedding similarity to the question (the default with a question: the project's MiniLM
   embedder costs a fraction of an LM pass), by how well each segment predicts the question
   (``rank="lm"``, LongLLMLingua's question-aware ranking: the NLL of the question after the
   segment), or without a question by the segment's own perplexity (LLMLingua's demonstration
   level) -- and keep whole segments, best first, until the budget is covered.
2. **Iterative token-level compression.** The kept text is cut into windows. Each window is
   scored in *one* forward pass conditioned, through the KV cache, on what was *kept* of the
   windows before it (not on the original text): a token is judged by its surprisal given the
   compressed prefix the target model will actually see. The window then keeps its most
   surprising tokens within its share of the budget, and its dropped tokens are masked out of
   the cache. Unlike llmlingua, kept tokens are not re-encoded on the compressed prefix: their
   cache entries from their own window are reused, so the token level costs one pass over the
   kept segments instead of about two.
   Optionally the score is *contrastive* (LongLLMLingua): surprisal without the question minus
   surprisal with it, i.e. how much the question makes a token expected -- computed as a second
   row of the same batched pass.

Prompts of a batch are compressed together: their windows share forward passes, padded rows
share one KV cache (explicit positions and a per-row mask keep them independent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from datadiet.pipeline.models.embedding import Embedder
from datadiet.pipeline.models.loading import ModelNotAvailableError
from datadiet.prompting.compression.base import Job, Plan, Working, working_text
from datadiet.prompting.compression.protect import find_spans


@dataclass
class LinguaOptions:
    """Knobs of the lingua method (defaults chosen on SST-2/GSM8K training prompts).

    window: tokens per iterative window; smaller windows condition more on the compressed
        prefix (closer to the paper), larger ones are faster (fewer passes to recompute).
    contrastive: question-conditioned contrastive surprisal for the token level.
    segment_filter: drop whole segments first (only when there are several).
    rank: "auto" (embedding with a question, ppl without), "lm", "embedding", "ppl", or "order"
        (keep the last segments first -- e.g. kNN demonstrations sorted nearest-last).
    segment_slack: after the segment that crosses the budget, keep further segments only
        within ``(1 + slack)·budget`` tokens (more choice for the token level, more work).
    """

    window: int = 256
    contrastive: bool = False
    segment_filter: bool = True
    rank: str = "auto"
    segment_slack: float = 0.1


def rank_segments(jobs: Sequence[Job], rank: str, scorer: object) -> list[list[int] | None]:
    """Order each job's segments best first (``None`` where there is nothing to rank)."""
    orders: list[list[int] | None] = [None] * len(jobs)
    lm_items: list[tuple[int, int, str, str]] = []
    ppl_items: list[tuple[int, int, str]] = []
    emb_jobs: list[int] = []
    for j, job in enumerate(jobs):
        if len(job.segments) < 2:
            continue
        how = rank
        if how == "auto":
            how = "embedding" if job.question else "ppl"
        if how in ("lm", "embedding") and not job.question:
            how = "ppl"
        if how == "order":
            orders[j] = list(range(len(job.segments)))[::-1]
        elif how == "lm":
            lm_items += [(j, i, s, job.separator + job.question) for i, s in enumerate(job.segments)]
        elif how == "ppl":
            ppl_items += [(j, i, s) for i, s in enumerate(job.segments)]
        elif how == "embedding":
            emb_jobs.append(j)
        else:
            raise ValueError(f"unknown segment ranking {rank!r}: lm, embedding, ppl, order, auto")
    scores: dict[tuple[int, int], float] = {}
    if ppl_items:
        # higher perplexity = more information (LLMLingua's demonstration level): sort by -ppl
        nll = scorer.nll([s for _, _, s in ppl_items])  # type: ignore[attr-defined]
        scores.update({(j, i): -float(v) for (j, i, _), v in zip(ppl_items, nll, strict=True)})
    if emb_jobs:
        embedder = _embedder()
        if embedder is None:  # no embedding model offline: rank with the LM instead
            for j in emb_jobs:
                job = jobs[j]
                lm_items += [(j, i, s, job.separator + job.question)
                             for i, s in enumerate(job.segments)]
            emb_jobs = []
    if lm_items:
        # lower NLL of the question after the segment = the segment explains the question
        nll = scorer.conditional_nll([s for _, _, s, _ in lm_items],  # type: ignore[attr-defined]
                                     [q for _, _, _, q in lm_items])
        scores.update({(j, i): float(v) for (j, i, _, _), v in zip(lm_items, nll, strict=True)})
    if emb_jobs:
        texts = [t for j in emb_jobs for t in [*jobs[j].segments, jobs[j].question]]
        vecs = embedder.encode(texts)
        pos = 0
        for j in emb_jobs:
            n = len(jobs[j].segments)
            sims = vecs[pos : pos + n] @ vecs[pos + n]
            scores.update({(j, i): -float(s) for i, s in enumerate(sims)})
            pos += n + 1
    for j, job in enumerate(jobs):
        if orders[j] is None and len(job.segments) >= 2:
            vals = np.asarray([scores[(j, i)] for i in range(len(job.segments))])
            orders[j] = [int(i) for i in np.argsort(vals, kind="stable")]
    return orders


@lru_cache(maxsize=1)
def _embedder() -> object | None:
    """The project's embedder, or ``None`` if its model is not available offline.

    No disk cache: a compression call should not write to the user's cache, and segments are
    short enough that embedding them is a small part of the call.
    """
    try:
        return Embedder(cache=False)
    except (ModelNotAvailableError, OSError):
        return None


def select_segments(job: Job, order: Sequence[int] | None, slack: float) -> list[int]:
    """Keep whole segments, best first, until the context budget is covered.

    The segment that crosses the budget is kept (so the token level can meet the budget from
    below); later ones only while the total stays within ``(1 + slack)`` times the budget. A
    small slack keeps the token level's work -- one forward pass over the kept text -- close to
    the budget itself, which is where the speed comes from; whole demonstrations are also what
    in-context learning degrades least without.

    Budget feasibility comes first: a segment is skipped if its protected text would push the
    protected total over the target, so the token level can always meet the budget.
    """
    n = len(job.segments)
    if order is None or n < 2:
        return list(range(n))
    counter = job.counter
    sep_cost = counter(job.separator) if job.separator else 0
    fixed = sum(counter(p) for p in job.fixed_parts) + sep_cost * len(job.fixed_parts)
    budget = max(0, job.target - fixed)
    goal = budget * (1.0 + slack)
    kept: list[int] = []
    covered = 0
    protected = 0
    forced = [i for i in order if i in job.keep_segments]
    for i in forced + [i for i in order if i not in job.keep_segments]:
        if i in kept:
            continue
        seg = job.segments[i]
        cost = counter(seg) + sep_cost
        # once the budget is covered, a further segment must fit within the slack
        if i not in job.keep_segments and covered >= budget and covered + cost > goal:
            break
        need = sum(counter(seg[a:b]) for a, b in _spans(seg, job)) if job.patterns else 0
        if i not in job.keep_segments and protected + need > budget and kept:
            continue
        kept.append(i)
        covered += cost
        protected += need
    return sorted(kept)


def _spans(text: str, job: Job) -> list[tuple[int, int]]:
    return find_spans(text, job.patterns)


@dataclass
class _Row:
    """One sequence of the batched iterative pass (a job's plain or question-conditioned view)."""

    job: int
    stream: np.ndarray  # token ids of the scored context (no prefix)
    pending: list[int]  # prefix tokens still to enter the cache (only before the first window)
    valid: int = 0  # positions used so far (the next position id)
    carry: object = None  # log-softmax predicting the next window's first token


class LinguaMethod:
    """Coarse-to-fine LLMLingua-style compression with a shared, batched KV-cached pass."""

    name = "lingua"

    def __init__(self, scorer: object, options: LinguaOptions | None = None) -> None:
        self.scorer = scorer
        self.options = options or LinguaOptions()
        if self.options.segment_filter and self.options.rank in ("auto", "embedding"):
            _embedder()  # load it now, so a call's ``seconds`` do not include model loading

    def plan(self, jobs: Sequence[Job]) -> list[Plan]:
        opt = self.options
        tokenizer = self.scorer.tokenizer  # type: ignore[attr-defined]
        orders = rank_segments(jobs, opt.rank, self.scorer) if opt.segment_filter else [None] * len(jobs)
        works: list[Working] = []
        kept_segments: list[list[int]] = []
        for job, order in zip(jobs, orders, strict=True):
            kept = select_segments(job, order, opt.segment_slack)
            kept_segments.append(kept)
            works.append(working_text(job, kept, tokenizer))
        scores, keeps = self._token_level(jobs, works)
        plans = []
        for j, work in enumerate(works):
            plans.append(Plan(kept_segments[j], work.units, keeps[j], scores[j], work.pieces,
                              info={"segment_order": orders[j]}))
        return plans

    # -- token level -------------------------------------------------------------------------

    def _quotas(self, job: Job, work: Working, windows: list[tuple[int, int]]) -> list[int]:
        """Free tokens each window may keep, summing to the (scoring-token) free budget."""
        u = work.units
        total_scoring = int(u.n_tokens.sum())
        total_count = max(1, job.counter(u.text))
        target_scoring = job.target * total_scoring / total_count
        free_budget = max(0.0, target_scoring - float(u.n_tokens[u.mandatory].sum()))
        free_tokens = [int(u.n_tokens[lo:hi][~u.mandatory[lo:hi]].sum()) for lo, hi in windows]
        total_free = max(1, sum(free_tokens))
        frac = min(1.0, free_budget / total_free)
        quotas, carry = [], 0.0
        for f in free_tokens:
            want = frac * f + carry
            q = int(min(f, max(0, round(want))))
            carry = want - q
            quotas.append(q)
        return quotas

    def _windows(self, work: Working) -> list[tuple[int, int]]:
        """Unit ranges of about ``window`` tokens each, over the scored (non-tail) units."""
        u, size = work.units, max(8, self.options.window)
        out, lo, acc = [], 0, 0
        for k in range(work.tail_unit):
            acc += int(u.n_tokens[k])
            if acc >= size:
                out.append((lo, k + 1))
                lo, acc = k + 1, 0
        if lo < work.tail_unit:
            out.append((lo, work.tail_unit))
        return out

    def _token_level(self, jobs: Sequence[Job], works: Sequence[Working]
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Score and decide window by window: one forward pass per window for all rows.

        The cache keeps every window's keys and values, but after the decision the dropped
        tokens are masked out, so later windows attend to the kept tokens only. The kept
        tokens' entries are reused as computed in their own window instead of being recomputed
        on the compressed prefix (llmlingua's way): that makes the whole token level one pass
        over the kept segments, which is where most of the speed comes from. Positions keep the
        original numbering so rotary distances stay consistent with the cached keys.
        """
        import torch

        scorer = self.scorer
        prefix = int(scorer.prefix_id)  # type: ignore[attr-defined]
        pad = int(scorer.tokenizer.pad_token_id)  # type: ignore[attr-defined]
        windows = [self._windows(w) for w in works]
        quotas = [self._quotas(job, w, win) for job, w, win in zip(jobs, works, windows, strict=True)]
        plain = [np.full(len(w.units.token_ids), np.nan) for w in works]
        cond = [np.full(len(w.units.token_ids), np.nan) for w in works]
        keeps = [w.units.mandatory.copy() for w in works]
        tok_lo = [np.concatenate([[0], np.cumsum(w.units.n_tokens)])[:-1] for w in works]
        token_keep = [np.zeros(len(w.units.token_ids), dtype=bool) for w in works]

        rows: list[_Row] = []
        row_kind: list[str] = []
        for j, (job, w) in enumerate(zip(jobs, works, strict=True)):
            if not windows[j]:
                continue
            rows.append(_Row(j, w.units.token_ids, [prefix]))
            row_kind.append("plain")
            if self.options.contrastive and job.question:
                q_ids = scorer.tokenizer(job.question + job.separator,  # type: ignore[attr-defined]
                                         add_special_tokens=False)["input_ids"]
                rows.append(_Row(j, w.units.token_ids, [prefix, *q_ids]))
                row_kind.append("cond")
        cache = None
        cache_mask = torch.zeros((len(rows), 0), dtype=torch.long)
        step = 0
        while rows:
            spans = []
            for r in rows:
                lo_u, hi_u = windows[r.job][step]
                a = int(tok_lo[r.job][lo_u])
                b = int(tok_lo[r.job][hi_u - 1] + works[r.job].units.n_tokens[hi_u - 1])
                spans.append((a, b))
            P = max(len(r.pending) for r in rows)
            Wm = max(b - a for a, b in spans)
            B = len(rows)
            ids = torch.full((B, P + Wm), pad, dtype=torch.long)
            mask = torch.zeros((B, P + Wm), dtype=torch.long)
            pos = torch.zeros((B, P + Wm), dtype=torch.long)
            last_cols = []
            for i, (r, (a, b)) in enumerate(zip(rows, spans, strict=True)):
                n_p, n_w = len(r.pending), b - a
                if n_p:
                    ids[i, P - n_p : P] = torch.as_tensor(r.pending)
                    mask[i, P - n_p : P] = 1
                    pos[i, P - n_p : P] = torch.arange(r.valid, r.valid + n_p)
                ids[i, P : P + n_w] = torch.as_tensor(r.stream[a:b])
                mask[i, P : P + n_w] = 1
                pos[i, P : P + n_w] = torch.arange(r.valid + n_p, r.valid + n_p + n_w)
                last_cols.append(P + n_w - 1)
            score_from = max(P - 1, 0)
            logprobs, last, cache = scorer.logprobs_with_cache(  # type: ignore[attr-defined]
                ids, attention_mask=torch.cat([cache_mask, mask], dim=1), position_ids=pos,
                past_key_values=cache, score_from=score_from, last_cols=last_cols,
            )
            for i, (r, (a, b)) in enumerate(zip(rows, spans, strict=True)):
                n_w = b - a
                if n_w == 0:  # a window of token-less units (nothing to score)
                    if P:
                        r.carry = last[i]
                    r.valid += len(r.pending)
                    continue
                if P:  # logprobs[j] scores window token j (predicted from column P - 1 + j)
                    lp = logprobs[i, :n_w].numpy().astype(np.float64)
                else:  # logprobs[j] scores window token j + 1; the first comes from the carry
                    lp = np.empty(n_w, dtype=np.float64)
                    lp[1:] = logprobs[i, : n_w - 1].numpy()
                    lp[0] = float(r.carry[int(r.stream[a])])  # type: ignore[index]
                (plain if row_kind[i] == "plain" else cond)[r.job][a:b] = -lp
                r.carry = last[i]
                r.valid += len(r.pending) + n_w
            decided = set()
            for r in rows:
                if r.job not in decided:
                    decided.add(r.job)
                    self._decide(r.job, step, works, windows, quotas, plain, cond, keeps, tok_lo,
                                 token_keep, contrastive=self.options.contrastive
                                 and bool(jobs[r.job].question))
            # dropped tokens stay in the cache but are masked out from now on
            for i, (r, (a, b)) in enumerate(zip(rows, spans, strict=True)):
                mask[i, P : P + (b - a)] = torch.as_tensor(token_keep[r.job][a:b], dtype=torch.long)
                r.pending = []
            cache_mask = torch.cat([cache_mask, mask], dim=1)
            step += 1
            alive = [i for i, r in enumerate(rows) if step < len(windows[r.job])]
            if len(alive) < len(rows):
                rows = [rows[i] for i in alive]
                row_kind = [row_kind[i] for i in alive]
                if not rows:
                    break
                cache.batch_select_indices(torch.as_tensor(alive))  # type: ignore[union-attr]
                cache_mask = cache_mask[alive]
        scores = []
        for j, w in enumerate(works):
            tok = plain[j] - cond[j] if self.options.contrastive and jobs[j].question else plain[j]
            s = w.units.unit_scores(tok, fill=-np.inf)
            s[w.units.mandatory] = np.inf
            scores.append(s)
        return scores, keeps

    def _decide(self, j: int, step: int, works: Sequence[Working], windows: list, quotas: list,
                plain: list, cond: list, keeps: list, tok_lo: list, token_keep: list,
                contrastive: bool) -> None:
        """Keep the window's mandatory units and its highest-scoring free units within quota,
        and mark their tokens as kept (the rest get masked out of the cache)."""
        u = works[j].units
        lo_u, hi_u = windows[j][step]
        tok = plain[j] - cond[j] if contrastive else plain[j]
        unit_score = u.unit_scores(tok, fill=-np.inf)[lo_u:hi_u]
        free = ~u.mandatory[lo_u:hi_u]
        order = np.argsort(-np.where(free, unit_score, -np.inf), kind="stable")
        quota = quotas[j][step]
        spent = 0
        for k in order:
            if spent >= quota or not free[k]:
                break
            n = int(u.n_tokens[lo_u + k])
            if spent + n > quota:
                continue
            keeps[j][lo_u + k] = True
            spent += n
        for k in range(lo_u, hi_u):
            if keeps[j][k]:
                a = int(tok_lo[j][k])
                token_keep[j][a : a + int(u.n_tokens[k])] = True
