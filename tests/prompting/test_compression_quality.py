"""What compression keeps, with the real offline SmolLM2 and MiniLM on small real prompts.

A needle test in miniature: WikiText-2 paragraphs as context, one of them carrying an invented
fact, and the question that asks for it. These tests fail if the ranking were reversed or
random: the answer must survive far more often than random dropping at the same budget keeps
it, and the passage with the fact must rank first. Protected spans must survive whatever the
coarse level drops, or the call must fail before any model work.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from datadiet.pipeline.ledger import Ledger
from datadiet.prompting import BudgetError, Compressor, compress
from datadiet.prompting.compression.base import CompressOptions, build_job
from datadiet.prompting.compression.budget import TokenCounter, lower_bound
from datadiet.prompting.compression.lingua import LinguaOptions
from datadiet.prompting.compression.protect import compile_patterns
from datadiet.prompting.compression.ranking import rank_passages

pytestmark = pytest.mark.slow

NEEDLES = [
    ("The lighthouse keeper's cat is called Biscuit.", "What is the lighthouse keeper's cat called?",
     "Biscuit"),
    ("The stolen painting of the Ostrava museum was hidden inside a harpsichord.",
     "Where was the stolen painting of the Ostrava museum hidden?", "harpsichord"),
    ("The monks of Carrow Abbey brew their ale with heather.",
     "What do the monks of Carrow Abbey brew their ale with?", "heather"),
]


@pytest.fixture(scope="module")
def needles(wiki_paragraphs):
    """Three prompts of five short WikiText paragraphs; the fact sits inside one of them."""
    short = [p for p in wiki_paragraphs if 300 <= len(p) <= 600]
    rng = np.random.default_rng(7)
    prompts = []
    for fact, question, answer in NEEDLES:
        paragraphs = [short[i] for i in rng.choice(len(short), 5, replace=False)]
        where = int(rng.integers(5))
        sentences = paragraphs[where].split(". ")
        sentences.insert(int(rng.integers(1, len(sentences))), fact[:-1])
        paragraphs[where] = ". ".join(sentences)
        prompts.append((paragraphs, question, answer, where))
    return prompts


def _context(text: str, question: str) -> str:
    return text[: len(text) - len(question)] if text.endswith(question) else text


def test_the_answer_survives_far_more_often_than_random_dropping(scorer, needles):
    comp = Compressor("lingua", scorer)
    as_lists = comp.compress_batch([p for p, *_ in needles], questions=[q for _, q, *_ in needles],
                                   rate=0.2, protect=[])
    as_strings = comp.compress_batch(["\n\n".join(p) for p, *_ in needles],
                                     questions=[q for _, q, *_ in needles], rate=0.2, protect=[])
    kept = [answer in _context(c.text, q)
            for (_, q, answer, _), c in zip(needles * 2, as_lists + as_strings, strict=True)]
    # random dropping at the same budget: keep each scoring token with probability 0.2
    rng = np.random.default_rng(0)
    random_kept = []
    for paragraphs, _, answer, _ in needles:
        ids = scorer.tokenizer(" ".join(paragraphs), add_special_tokens=False)["input_ids"]
        for _ in range(20):
            mask = rng.random(len(ids)) < 0.2
            text = scorer.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
            random_kept.append(answer in text)
    assert np.mean(kept) >= 5 / 6, kept
    assert np.mean(random_kept) < 0.3
    for c in as_lists + as_strings:
        assert lower_bound(c.target_tokens) <= c.compressed_tokens <= c.target_tokens
    # a string is cut into passages, so the coarse level had something to rank
    assert all(c.info["passages"] > 5 for c in as_strings)


@pytest.mark.parametrize("rank", ["embedding", "lm"])
def test_the_passage_with_the_fact_ranks_first(scorer, needles, rank):
    counter = TokenCounter("smollm2", scorer.count_tokens)
    jobs = [build_job(paragraphs, question=q, instruction=None, options=CompressOptions(),
                      patterns=[], counter=counter) for paragraphs, q, *_ in needles]
    orders = rank_passages(jobs, rank, scorer)
    assert [order[0] for order in orders] == [where for *_, where in needles]


def test_protected_spans_survive_when_whole_segments_are_dropped(scorer, shared_data):
    rows = [json.loads(line) for line in
            (shared_data / "math" / "gsm8k_train.jsonl").read_text().splitlines()[:6]]
    segments = [r["question"] for r in rows]
    c = compress(segments, rate=0.4, model=scorer, question="How much money is left?")
    numbers = [m.group() for s in segments for m in re.finditer(compile_patterns(None)[0], s)]
    assert len(numbers) >= 8
    for number in numbers:
        assert number in c.text, (number, c.text)
    assert lower_bound(c.target_tokens) <= c.compressed_tokens <= c.target_tokens
    # the coarse level did drop segments: they kept only their protected spans
    assert len(c.info["passages_ranked_in"]) < len(segments)
    # the same in one string: paragraphs and sentences are passages, protection still holds
    s = compress("\n\n".join(segments), rate=0.4, model=scorer, question="How much is left?")
    assert all(number in s.text for number in numbers)
    # protect_scope="kept_passages": whole segments may go, but what is kept keeps its numbers
    k = compress(segments, rate=0.25, model=scorer, protect_scope="kept_passages")
    assert 0 < len(k.kept_segments) < len(segments)
    for i in k.kept_segments:
        assert all(m.group() in k.text for m in re.finditer(compile_patterns(None)[0], segments[i]))


def test_too_much_protection_fails_before_any_model_work(shared_data):
    from datadiet.pipeline.models.scoring import LMScorer

    ledger = Ledger()
    scorer = LMScorer(ledger=ledger)
    rows = [json.loads(line) for line in
            (shared_data / "math" / "gsm8k_train.jsonl").read_text().splitlines()[:6]]
    answers = [r["answer"] for r in rows]
    with pytest.raises(BudgetError, match=r"needs \d+ tokens, more than the target") as err:
        compress(answers, rate=0.1, model=scorer)
    need = int(re.search(r"needs (\d+) tokens", str(err.value)).group(1))
    numbers = [m.group() for a in answers for m in re.finditer(compile_patterns(None)[0], a)]
    # the protected text is every number of every answer (plus the gaps between answers)
    assert scorer.count_tokens("".join(numbers)) <= need <= scorer.count_tokens(" ".join(numbers))
    assert ledger.total.tokens == 0  # nothing was scored


def test_long_prompts_are_scored_in_windows_of_a_bounded_cache(scorer, wiki_paragraphs):
    text = "\n\n".join(wiki_paragraphs[:3])
    comp = Compressor("lingua", scorer, window=32, context=112, segment_filter=False)
    c = comp.compress(text, rate=0.5, protect=[])
    assert lower_bound(c.target_tokens) <= c.compressed_tokens <= c.target_tokens
    assert c.origin_tokens > 3 * 112  # so the cache was rebuilt several times
    assert c.info["cache_restarts"] >= 4
    assert LinguaOptions().context <= scorer.max_context
