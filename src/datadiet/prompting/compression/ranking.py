"""The coarse level's ranking: which passages of a context matter most for the question.

Two question-aware rankers, because they trade cost against judgement:

* ``"embedding"``: cosine similarity to the question, with the project's MiniLM embedder, of
  each passage or of its best sentence -- a fraction of an LM pass, but blind to facts phrased
  unlike the question.
* ``"lm"``: LongLLMLingua's question-aware coarse ranking (Jiang et al. 2024, sec. 4.1): the mean
  log-probability of the question, followed by the paper's restrictive statement, after each
  passage -- ``log p(question | passage)``. Contrasting it with ``log p(question)`` alone (how
  much the passage raises the question's probability, the paper's framing) would give the same
  order, since that baseline is one number per prompt, so it is not computed.

Without a question, passages are ranked by their own perplexity, highest first (LLMLingua's
demonstration level: a passage the model finds predictable adds little), or kept in order
(``"order"``: the last passages first, e.g. kNN demonstrations sorted nearest-last).

Every LM number here comes from the one LM scorer's ``score_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from datadiet.pipeline.models.embedding import Embedder
from datadiet.pipeline.models.loading import ModelNotAvailableError
from datadiet.prompting.compression.base import Job
from datadiet.prompting.compression.segments import sentence_spans

RANKERS = ("auto", "lm", "embedding", "ppl", "order")
# LongLLMLingua appends this to the question before scoring it after each document
RESTRICTIVE_STATEMENT = "We can get the answer to this question in the given documents."
# the ranker "auto" picks when there is a question (see benchmarks/compression.py)
DEFAULT_QUESTION_RANKER = "embedding"


@lru_cache(maxsize=1)
def embedder() -> Embedder | None:
    """The project's embedder, or ``None`` if its model is not available offline.

    No disk cache: a compression call should not write to the user's cache, and passages are
    short enough that embedding them is a small part of the call. Batches of 16 keep MiniLM's
    attention buffers near 100 MB (at 64 they alone add ~400 MB to a call's peak memory).
    """
    try:
        return Embedder(cache=False, batch_size=16)
    except (ModelNotAvailableError, OSError):
        return None


def resolve_ranker(rank: str, job: Job) -> str:
    """The ranker used for ``job``: question-aware ones need a question."""
    if rank not in RANKERS:
        raise ValueError(f"unknown passage ranking {rank!r}: choose one of {', '.join(RANKERS)}")
    if rank == "auto":
        rank = DEFAULT_QUESTION_RANKER if job.question else "ppl"
    if rank in ("lm", "embedding") and not job.question:
        return "ppl"
    if rank == "embedding" and embedder() is None:  # no embedding model offline: use the LM
        return "lm"
    return rank


def rank_passages(jobs: Sequence[Job], rank: str, scorer: object) -> list[list[int] | None]:
    """Each job's passages, best first (``None`` where there are fewer than two).

    All jobs' model work is batched: one scorer call for every LM-ranked passage, one embedder
    call for every embedding-ranked one.
    """
    how = [resolve_ranker(rank, job) if len(job.passages) > 1 else None for job in jobs]
    scores: list[np.ndarray | None] = [None] * len(jobs)
    lm = [j for j, h in enumerate(how) if h == "lm"]
    if lm:
        for j, s in zip(lm, question_logprob(scorer, [jobs[j] for j in lm]), strict=True):
            scores[j] = s
    ppl = [j for j, h in enumerate(how) if h == "ppl"]
    if ppl:
        texts = [[job.passage_text(i) for i in range(len(job.passages))] for job in (jobs[j] for j in ppl)]
        flat = mean_logprob(scorer, [t for ts in texts for t in ts])
        pos = 0
        for j, ts in zip(ppl, texts, strict=True):
            scores[j] = -flat[pos : pos + len(ts)]  # higher perplexity first
            pos += len(ts)
    emb = [j for j, h in enumerate(how) if h == "embedding"]
    if emb:
        for j, s in zip(emb, embedding_similarity([jobs[j] for j in emb]), strict=True):
            scores[j] = s
    orders: list[list[int] | None] = []
    for j, h in enumerate(how):
        if h is None:
            orders.append(None)
        elif h == "order":
            orders.append(list(range(len(jobs[j].passages)))[::-1])
        else:
            orders.append([int(i) for i in np.argsort(-np.asarray(scores[j]), kind="stable")])
    return orders


def embedding_similarity(jobs: Sequence[Job]) -> list[np.ndarray]:
    """Per job, per passage: cosine similarity to the question of the passage or, for a long
    passage, of its best sentence, whichever is higher.

    A long passage (over ``long_passage_tokens``) is judged by its sentences because a document
    is relevant if one of its sentences answers the question, and MiniLM, averaging over the
    whole passage (and reading only its first 256 word pieces), dilutes a one-sentence fact; its
    vector as a whole is the mean of its sentences' (one MiniLM pass over the text, not two).
    Short passages (a demonstration's review and label line) are judged whole: their lines
    alone say little.
    """
    texts: list[str] = []
    # per job: (first row of each passage's vectors, one past the last passage's, question row)
    layout: list[tuple[list[int], int]] = []
    for job in jobs:
        firsts = []
        for part in job.passages:
            firsts.append(len(texts))
            text = job.original[part.start : part.end]
            long = job.counter(text) > job.options.long_passage_tokens
            sentences = sentence_spans(job.original, part.start, part.end) if long else []
            texts += [job.original[a:b] for a, b in sentences] if len(sentences) > 1 else [text]
        layout.append((firsts, len(texts)))
        texts.append(job.question)
    vecs = embedder().encode(texts)  # type: ignore[union-attr]
    out = []
    for firsts, question_row in layout:
        question = vecs[question_row]
        ends = [*firsts[1:], question_row]
        scores = np.full(len(firsts), -np.inf)
        for i, (a, b) in enumerate(zip(firsts, ends, strict=True)):
            whole = vecs[a:b].mean(axis=0)
            whole /= max(float(np.linalg.norm(whole)), 1e-12)
            scores[i] = max(float(whole @ question), float((vecs[a:b] @ question).max()))
        out.append(scores)
    return out


def _ids(scorer: object, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(scorer.tokenizer(list(texts), add_special_tokens=False)["input_ids"])  # type: ignore[attr-defined]


def question_logprob(scorer: object, jobs: Sequence[Job]) -> list[np.ndarray]:
    """Per job, per passage: mean log p(question + restrictive statement | passage).

    A passage too long for the scorer's window keeps its end (nearest the question).
    """
    limit = int(scorer.max_length)  # type: ignore[attr-defined]
    prefix = int(scorer.prefix_id)  # type: ignore[attr-defined]
    seqs: list[list[int]] = []
    starts: list[int] = []
    for job in jobs:
        sep = job.options.separator
        q = _ids(scorer, [sep + job.question + " " + RESTRICTIVE_STATEMENT])[0][: limit // 2]
        for p in _ids(scorer, [job.passage_text(i) for i in range(len(job.passages))]):
            p = p[max(0, len(p) - (limit - 1 - len(q))):]
            seqs.append([prefix, *p, *q])
            starts.append(len(p))
    # only the question's positions need logits (score_ids' ``starts``)
    flat = scorer.score_ids(seqs, starts=starts)  # type: ignore[attr-defined]
    out, pos = [], 0
    for job in jobs:
        n = len(job.passages)
        out.append(np.asarray([float(np.mean(s)) for s in flat[pos : pos + n]]))
        pos += n
    return out


def mean_logprob(scorer: object, texts: Sequence[str]) -> np.ndarray:
    """Mean log-probability per token of each text on its own (its head, if too long)."""
    limit = int(scorer.max_length)  # type: ignore[attr-defined]
    prefix = int(scorer.prefix_id)  # type: ignore[attr-defined]
    seqs = [[prefix, *ids[: limit - 1]] for ids in _ids(scorer, texts)]
    return np.asarray([float(np.mean(s)) if len(s) else 0.0 for s in scorer.score_ids(seqs)])  # type: ignore[attr-defined]
