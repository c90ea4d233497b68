"""Perplexity filter with the real default LM (SmolLM2-135M-Instruct, offline) on real prose.

Sherlock Holmes paragraphs must rank below the same kind of paragraphs with their words
shuffled and below random-character junk; the band keeps the middle; FLOPs land in the ledger.
The inputs are small (13 documents of 20–50 tokens) to keep the file fast on CPU.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.common import resolve_keep
from datadiet.selectors.perplexity import (
    EMPTY,
    TOO_HIGH,
    TOO_LOW,
    PerplexityFilter,
    perplexity_decision,
)
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
N_PROSE, N_SHUFFLED, N_RANDOM = 6, 3, 3



def doyle_paragraphs() -> list[str]:
    text = (DATA / "lm" / "doyle_adventures.txt").read_text(encoding="utf-8")
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in paras if 110 < len(p) < 220]


@pytest.fixture(scope="module")
def corpus() -> Dataset:
    if not DATA.is_dir():
        pytest.skip("real-data kit not present")
    paras = doyle_paragraphs()
    rng = random.Random(0)
    prose = paras[:N_PROSE]
    shuffled = []
    for p in paras[N_PROSE : N_PROSE + N_SHUFFLED]:  # other paragraphs, words shuffled
        words = p.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    alphabet = "abcdefghijklmnopqrstuvwxyz     .,"
    junk = ["".join(rng.choice(alphabet) for _ in range(100)) for _ in range(N_RANDOM)]
    texts = prose + shuffled + junk + [""]
    kinds = ["prose"] * N_PROSE + ["shuffled"] * N_SHUFFLED + ["random"] * N_RANDOM + ["empty"]
    return Dataset.from_dict(
        {"id": [f"{k}-{i}" for i, k in enumerate(kinds)], "text": texts, "kind": kinds}
    )


@pytest.fixture(scope="module")
def ctx() -> StepContext:
    return StepContext(show_progress=False)


@pytest.fixture(scope="module")
def low_selection(corpus, ctx):
    return PerplexityFilter(keep=0.5).select(corpus, ctx)


def test_registered() -> None:
    assert STEP_REGISTRY["perplexity"] is PerplexityFilter


@pytest.mark.slow
def test_prose_ranks_below_junk(corpus, low_selection) -> None:
    ppl = low_selection.scores
    kinds = np.asarray(corpus["kind"])
    prose = ppl[kinds == "prose"]
    junk = ppl[(kinds == "shuffled") | (kinds == "random")]
    assert np.all(np.isfinite(prose)) and np.all(np.isfinite(junk))
    assert prose.max() < junk.min(), (prose, junk)
    assert np.isnan(ppl[kinds == "empty"]).all()


@pytest.mark.slow
def test_keep_lowest_fraction(corpus, low_selection) -> None:
    kinds = np.asarray(corpus["kind"])
    # 12 scorable docs, keep half: exactly the 6 prose paragraphs
    assert set(kinds[low_selection.keep]) == {"prose"}
    assert low_selection.n_kept == N_PROSE
    assert low_selection.removed_by_kind() == {TOO_HIGH: N_SHUFFLED + N_RANDOM, EMPTY: 1}
    stats = low_selection.stats
    assert stats["scored"] == len(corpus) - 1
    assert stats["kept_ppl_max"] < np.nanmin(low_selection.scores[kinds != "prose"])


@pytest.mark.slow
def test_band_and_absolute_bounds_on_real_scores(low_selection) -> None:
    ppl = low_selection.scores
    finite = np.flatnonzero(np.isfinite(ppl))
    ranked = finite[np.argsort(ppl[finite], kind="stable")]
    kinds = perplexity_decision(ppl, band=[0.25, 0.75])
    m = len(ranked)  # 12: ranks 0-2 too low, 3-8 kept, 9-11 too high
    assert set(ranked[: m // 4]) == set(np.flatnonzero(kinds == TOO_LOW))
    assert set(ranked[m // 4 : 3 * m // 4]) == set(np.flatnonzero(kinds == ""))
    assert set(ranked[3 * m // 4 :]) == set(np.flatnonzero(kinds == TOO_HIGH))
    cut = float(np.median(ppl[finite]))
    absolute = perplexity_decision(ppl, min_ppl=10.0, max_ppl=cut)
    assert np.all(ppl[absolute == ""] <= cut) and np.all(ppl[absolute == TOO_HIGH] > cut)
    both = perplexity_decision(ppl, keep=0.75, max_ppl=cut)  # every criterion must hold
    assert np.count_nonzero(both == "") == np.count_nonzero(ppl[finite] <= cut)


@pytest.mark.slow
def test_band_step_flops_and_truncation(corpus) -> None:
    """A fresh ledger: the step's tokens and FLOPs match ModelShape.flops exactly."""
    ctx = StepContext(show_progress=False)
    max_tokens = 16
    rows = [0, 1, 2, 3, N_PROSE, N_PROSE + 1, N_PROSE + N_SHUFFLED, len(corpus) - 2,
            len(corpus) - 1]  # four prose, two shuffled, two random, the empty one
    corpus = corpus.select(rows)
    sel = PerplexityFilter(band=[0.25, 0.75], max_tokens=max_tokens).select(corpus, ctx)
    m = len(corpus) - 1
    assert sel.n_kept == m // 2
    assert sel.removed_by_kind() == {TOO_HIGH: m // 4, TOO_LOW: m // 4, EMPTY: 1}
    kept_ppl = sel.scores[sel.keep]
    assert np.nanmax(sel.scores[sel.reason_kind == TOO_LOW]) <= kept_ppl.min()
    assert np.nanmin(sel.scores[sel.reason_kind == TOO_HIGH]) >= kept_ppl.max()

    scorer = ctx.lm_scorer()
    lengths = [len(scorer.tokenizer(t, add_special_tokens=False)["input_ids"])
               for t in corpus["text"]]
    scored = [min(n, max_tokens) + 1 for n in lengths]  # +1: the document-boundary token
    expected_flops = sum(scorer.shape.flops(n, n, training=False) for n in scored)
    record = ctx.ledger.stages["lm-scoring"]
    assert record.tokens == sum(scored) == sel.stats["tokens_scored"]
    assert record.flops > 0
    assert record.flops == pytest.approx(expected_flops, rel=1e-9)
    assert sel.stats["flops"] == pytest.approx(record.flops, rel=1e-12)
    assert record.seconds > 0
    assert sel.stats["truncated"] == sum(n > max_tokens for n in lengths) > 0


@pytest.mark.slow
def test_scores_match_the_shared_scorer(corpus, ctx, low_selection) -> None:
    direct = ctx.lm_scorer().perplexity(corpus["text"][:1])
    np.testing.assert_allclose(low_selection.scores[:1], direct, rtol=1e-3)


def test_parameter_validation_and_round_trip() -> None:
    for bad in (
        {},
        {"keep": 0.5, "band": [0.1, 0.9]},
        {"keep": -1},
        {"keep": True},
        {"keep": 1.5},
        {"band": [0.8, 0.2]},
        {"band": [0.1]},
        {"min_ppl": 50, "max_ppl": 10},
        {"keep": 0.5, "max_tokens": 0},
    ):
        with pytest.raises(ValueError):
            PerplexityFilter(**bad)
    step = PerplexityFilter(band=(0.1, 0.9), max_ppl=1e4, max_tokens=128)
    params = step.params()
    assert params["band"] == [0.1, 0.9] and params["model"] is None
    assert type(step)(**params).params() == params


def test_keep_follows_the_one_budget_rule() -> None:
    """An int is a count, a float a fraction rounded half up: the same rows as every step."""
    ppl = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert np.flatnonzero(perplexity_decision(ppl, keep=2) == "").tolist() == [1, 3]
    half = perplexity_decision(ppl, keep=0.5)
    assert np.count_nonzero(half == "") == resolve_keep(0.5, 5) == 3
    assert np.count_nonzero(perplexity_decision(ppl, keep=0) == "") == 0
    step = PerplexityFilter(keep=2)
    assert step.params()["keep"] == 2 and type(step)(**step.params()).keep == 2
