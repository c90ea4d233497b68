"""Instruction relevance with the real default LM on real T0 rows.

CommonGen "write a sentence about the topic X" rows: short prompts whose answers use the topic
word, so a response is clearly more likely under its own instruction than under another row's.
Two rows get each other's responses (the benchmark's "swapped" spoil); those two must be the
least relevant and the ones removed, which fails if the sign of the signal were reversed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.ifd import IFD, ifd_losses
from datadiet.selectors.relevance import (
    OFF_TOPIC,
    Relevance,
    as_user_turn,
    contrast_partners,
)

T0_FILE = "common_gen_topic_to_sentence.jsonl"


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    """Six rows on unrelated topics; the first two (ski, hay) carry each other's responses."""
    lines = list(iter_jsonl(shared_data / "sft" / "t0_train" / T0_FILE))
    ski, hay = lines[0], lines[12]
    swapped = [{**ski, "completion": hay["completion"]}, {**hay, "completion": ski["completion"]}]
    return swapped + [lines[i] for i in (3, 6, 9, 15)]  # tail, canoe, pull, match


def test_registered_and_validated() -> None:
    assert STEP_REGISTRY["relevance"] is Relevance
    for bad in ({"contrast": 0}, {"contrast": 1.5}, {"min_relevance": "low"}, {"seed": True},
                {"max_length": 4}, {"keep": -1}, {"cache": 3}):
        with pytest.raises(ValueError):
            Relevance(**bad)
    step = Relevance(keep=10, contrast=2, chat=False, min_relevance=None, seed=3)
    assert type(step)(**step.params()).params() == step.params()


def test_partners_are_other_instructions_and_seeded() -> None:
    instructions = ["a", "b", "a", "c", "d", "e"]
    partners = contrast_partners(instructions, 3, seed=0)
    assert partners.shape == (6, 3)
    for row, others in enumerate(partners):
        assert len(set(others)) == 3
        assert all(instructions[o] != instructions[row] for o in others)
    np.testing.assert_array_equal(partners, contrast_partners(instructions, 3, seed=0))
    assert not np.array_equal(partners, contrast_partners(instructions, 3, seed=1))
    # no more contrasts than other distinct instructions; none at all for a single one
    assert contrast_partners(["a", "b", "a"], 3, seed=0).shape == (3, 1)
    assert contrast_partners(["a", "a"], 3, seed=0).shape == (2, 0)


@pytest.mark.slow
def test_swapped_responses_are_the_least_relevant_and_removed(rows: list[dict],
                                                             tmp_path: Path) -> None:
    ctx = StepContext(show_progress=False)
    ds = Dataset.from_list(rows)
    sel = Relevance(keep=4, contrast=3, cache=str(tmp_path)).select(ds, ctx)
    score = sel.scores
    assert np.isfinite(score).all()
    assert max(score[:2]) < min(score[2:]), score  # the swapped pair ranks last
    assert (score[2:] > 0).all(), score  # an on-topic sentence gains from its own topic
    assert set(sel.removed_indices) == {0, 1}
    assert set(sel.reason_kind[:2]) <= {OFF_TOPIC, "relevance:below-budget"}

    # the value is the mean contrast loss minus the own loss: chat-formatted instructions, the
    # response scored with the end-of-turn token
    scorer = ctx.lm_scorer()
    tok = scorer.tokenizer
    prompts = [as_user_turn(tok, r["prompt"]) for r in rows]
    partners = contrast_partners(prompts, 3, seed=0)
    own = ifd_losses(scorer, [[(p, r["completion"])] for p, r in zip(prompts, rows, strict=True)],
                     end_token=tok.eos_token_id)
    contrast = ifd_losses(scorer, [[(prompts[o], r["completion"])]
                                   for r, ps in zip(rows, partners, strict=True) for o in ps],
                          end_token=tok.eos_token_id)
    expected = (contrast[:, 0].reshape(6, 3).mean(1) - own[:, 0]) / own[:, 2]
    np.testing.assert_allclose(score, expected, rtol=1e-5)
    assert sel.stats["chat_template"] and sel.stats["contrast"] == 3


@pytest.mark.slow
def test_raw_text_mode_shares_the_ifd_cache(rows: list[dict], tmp_path: Path) -> None:
    """chat=False scores IFD's own pairs: an ``ifd`` step after it makes no model call."""
    ctx = StepContext(show_progress=False)
    ds = Dataset.from_list(rows)
    sel = Relevance(keep=1.0, contrast=2, chat=False, min_relevance=None,
                    cache=str(tmp_path)).select(ds, ctx)
    assert not sel.stats["chat_template"] and sel.n_kept == 6
    assert np.isfinite(sel.scores).all()
    tokens = ctx.ledger.record("lm-scoring").tokens
    ifd = IFD(keep=1.0, max_ifd=None, cache=str(tmp_path)).select(ds, ctx)
    assert ctx.ledger.record("lm-scoring").tokens == tokens
    assert ifd.stats["cache_hits"] == 6 and ifd.stats["rows_scored"] == 0
