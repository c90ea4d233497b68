"""LM-as-judge: the expected rating read from the rating tokens' probabilities.

Two real SciQ rows of different lengths (so the batch is padded), checked against the plain
recipe: the chat-formatted prompt, one forward pass per row in transformers, the softmax over the
six rating tokens at the last position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.models.loading import load_causal_lm
from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.judge import BELOW_BUDGET, DEFAULT_TEMPLATE, RATINGS, Judge


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    rows = list(iter_jsonl(shared_data / "sft" / "t0_train" / "sciq_Direct_Question_Closed_Book_.jsonl"))
    return [rows[0], rows[1]]


def direct_rating(prompt: str, response: str) -> float:
    import torch

    model, tok = load_causal_lm(None)
    text = tok.apply_chat_template(
        [{"role": "user", "content": DEFAULT_TEMPLATE.format(instruction=prompt, response=response)}],
        tokenize=False, add_generation_prompt=True) + "Rating: "
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].double()
    rating_ids = [tok(r, add_special_tokens=False)["input_ids"][0] for r in RATINGS]
    probs = torch.softmax(logits[rating_ids], dim=0)
    return float((probs * torch.arange(1, 7, dtype=torch.float64)).sum())


def test_registered_and_template_validated() -> None:
    assert STEP_REGISTRY["judge"] is Judge
    for bad in ({"template": "Rate {instruction}"}, {"template": "{instruction} {response} {x}"},
                {"min_score": 7}, {"keep": -2}, {"max_length": 10}):
        with pytest.raises(ValueError):
            Judge(**bad)
    step = Judge(template="Q: {instruction}\nA: {response}\nScore 1-6:", chat=False)
    assert type(step)(**step.params()).params() == step.params()


@pytest.mark.slow
def test_expected_rating_matches_direct_and_is_cached(rows: list[dict], tmp_path: Path) -> None:
    ctx = StepContext(show_progress=False)
    ds = Dataset.from_list(rows)
    sel = Judge(keep=1, cache=str(tmp_path)).select(ds, ctx)
    direct = [direct_rating(r["prompt"], r["completion"]) for r in rows]
    np.testing.assert_allclose(sel.scores, direct, atol=1e-4)
    assert np.all((sel.scores >= 1) & (sel.scores <= 6))
    assert sel.n_kept == 1 and sel.keep[int(np.argmax(sel.scores))]
    assert sel.removed_by_kind() == {BELOW_BUDGET: 1}
    assert 0 < sel.stats["mean_rating_mass"] <= 1 and sel.stats["chat_template"]
    tokens = ctx.ledger.record("lm-scoring").tokens
    again = Judge(keep=2, cache=str(tmp_path)).select(ds, ctx)
    assert ctx.ledger.record("lm-scoring").tokens == tokens  # no model call
    assert again.stats["cache_hits"] == 2 and again.n_kept == 2
    np.testing.assert_array_equal(again.scores, sel.scores)
