"""IFD with the real default LM (SmolLM2-135M-Instruct, offline) on real T0 rows.

Small on purpose (SmolLM2 scores ~300 tokens/s on two cores): short SciQ closed-book rows, a
handful at a time. The direct computation is the plain transformers recipe — one row at a time,
``labels`` masked to the response — so it checks our batching, windows and dedup, not itself.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.pipeline.curate import curate
from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.models.loading import load_causal_lm
from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.ifd import (
    BELOW_BUDGET,
    EMPTY,
    IFD,
    NOT_HELPED,
    ifd_losses,
    ifd_ratio,
    pair_windows,
)

T0_FILE = "sciq_Direct_Question_Closed_Book_.jsonl"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    return list(iter_jsonl(shared_data / "sft" / "t0_train" / T0_FILE))[:40]


@pytest.fixture(scope="module")
def ctx() -> StepContext:
    return StepContext(show_progress=False)


def direct_ifd(prompt: str, response: str) -> float:
    """Cherry's recipe, one row at a time: mean response loss with and without the prompt."""
    import torch

    model, tok = load_causal_lm(None)
    start = tok.eos_token_id  # the scorer's document-boundary token
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = [t for t in tok(response, add_special_tokens=False)["input_ids"]
         if t not in tok.all_special_ids]  # an end-of-text marker is not content
    losses = []
    for ids, n_prompt in (([start, *p, *r], 1 + len(p)), ([start, *r], 1)):
        x = torch.tensor([ids])
        labels = x.clone()
        labels[0, :n_prompt] = -100
        with torch.inference_mode():
            losses.append(float(model(input_ids=x, labels=labels).loss))
    return losses[0] / losses[1]


def test_registered_and_validated() -> None:
    assert STEP_REGISTRY["ifd"] is IFD
    for bad in ({"keep": 1.5}, {"ratio": "bits"}, {"max_length": 4}, {"max_ifd": 0},
                {"cache": 3}):
        with pytest.raises(ValueError):
            IFD(**bad)
    step = IFD(keep=20, ratio="ppl", max_ifd=None)
    assert type(step)(**step.params()).params() == step.params()


def test_window_cuts_the_instruction_from_the_left() -> None:
    prompt, response = list(range(100, 700)), list(range(5000, 5100))
    tail, head, truncated = pair_windows(prompt, response, 512)
    assert head == response and tail == prompt[-411:] and truncated
    assert 1 + len(tail) + len(head) == 512
    long_response = list(range(9000, 9600))
    tail, head, truncated = pair_windows(prompt, long_response, 512)
    assert len(tail) == 128 and tail == prompt[-128:] and head == long_response[:383]
    assert pair_windows([1, 2], [3], 512) == ([1, 2], [3], False)


@pytest.mark.slow
def test_ifd_matches_a_direct_computation(rows: list[dict], ctx: StepContext) -> None:
    sample = rows[:3]
    losses = ifd_losses(ctx.lm_scorer(), [[(r["prompt"], r["completion"])] for r in sample])
    ours = ifd_ratio(losses)
    direct = [direct_ifd(r["prompt"], r["completion"]) for r in sample]
    np.testing.assert_allclose(ours, direct, rtol=1e-4, atol=1e-5)
    assert np.all(losses[:, 2] > 0) and np.all(losses[:, 3] == 0)
    ppl = ifd_ratio(losses, "ppl")
    np.testing.assert_allclose(np.log(ppl), (losses[:, 0] - losses[:, 1]) / losses[:, 2])


@pytest.mark.slow
def test_multi_turn_chat_scores_every_assistant_turn(rows: list[dict], ctx: StepContext) -> None:
    """A two-turn chat's losses are the sums of its turns, each scored after the turns before."""
    a, b = rows[4], rows[5]
    chat = {"messages": [{"role": "user", "content": a["prompt"]},
                         {"role": "assistant", "content": a["completion"]},
                         {"role": "user", "content": b["prompt"]},
                         {"role": "assistant", "content": b["completion"]}]}
    scorer = ctx.lm_scorer()
    first = f"User: {a['prompt']}\n\nAssistant: "
    second = f"{first}{a['completion']}\n\nUser: {b['prompt']}\n\nAssistant: "
    per_turn = ifd_losses(scorer, [[(first, a["completion"])], [(second, b["completion"])]])
    sel = IFD(keep=1.0, max_ifd=None, cache=False).select(Dataset.from_list([chat]), ctx)
    expected = per_turn.sum(axis=0)
    assert sel.scores[0] == pytest.approx(expected[0] / expected[1], rel=1e-5)
    # token-weighted over the turns, not the mean of the two turns' ratios
    turn_ifd = ifd_ratio(per_turn)
    assert sel.scores[0] != pytest.approx(turn_ifd.mean(), rel=1e-6)


@pytest.mark.slow
def test_selection_cache_and_budget(rows: list[dict], ctx: StepContext, tmp_path: Path) -> None:
    """IFD >= 1 dropped, the rest ranked; the second run (another keep) makes no model call."""
    sample = rows[:6] + [{"prompt": rows[8]["prompt"], "completion": ""}]
    ds = Dataset.from_list(sample)
    record = ctx.ledger.record("lm-scoring")
    tokens_before = record.tokens
    first = IFD(keep=0.5, cache=str(tmp_path)).select(ds, ctx)
    assert first.stats["rows_scored"] == 7 and first.stats["cache_hits"] == 0
    assert record.tokens > tokens_before
    ifd = first.scores
    assert np.isnan(ifd[6]) and first.reason_kind[6] == EMPTY
    eligible = np.flatnonzero(np.isfinite(ifd) & (ifd < 1))
    assert set(np.flatnonzero(first.reason_kind == NOT_HELPED)) == set(np.flatnonzero(ifd >= 1))
    top = eligible[np.argsort(-ifd[eligible])][: min(4, len(eligible))]  # 0.5 of 7 rows is 4
    assert set(first.kept_indices) == set(top)
    assert set(np.flatnonzero(first.reason_kind == BELOW_BUDGET)) == set(eligible) - set(top)

    tokens_after_first = record.tokens
    second = IFD(keep=2, ratio="ppl", cache=str(tmp_path)).select(ds, ctx)
    assert record.tokens == tokens_after_first  # no model call at all
    assert second.stats["rows_scored"] == 0 and second.stats["cache_hits"] == 7
    assert first.stats["model"]["hash"] == second.stats["model"]["hash"] is not None
    np.testing.assert_array_equal(np.isnan(second.scores), np.isnan(ifd))
    assert second.n_kept == 2


@pytest.mark.slow
def test_interrupted_scoring_resumes(rows: list[dict], tmp_path: Path, shared_data: Path) -> None:
    """Kill a scoring subprocess after its first committed chunk; the rerun scores only the rest."""
    n = 12
    script = f"""
import json, sys
from datasets import Dataset
from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.shared import shared_lm_scorer
from datadiet.pipeline.steps import StepContext
from datadiet.selectors.ifd import IFD
rows = list(iter_jsonl({str(shared_data / "sft" / "t0_train" / T0_FILE)!r}))[:{n}]
ctx = StepContext(show_progress=False)
with shared_lm_scorer(None, Ledger()) as scorer:  # the process's one scorer, which IFD's map uses
    scorer.tokens_per_batch = 16  # chunks of a few rows, each committed on its own
IFD(keep=1.0, cache={str(tmp_path)!r}).select(Dataset.from_list(rows), ctx)
print("finished")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    db = tmp_path / "scores.sqlite"

    def committed() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db, timeout=30) as con:
                return con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0

    deadline = time.monotonic() + 300
    while committed() == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    assert b"finished" not in out, "the subprocess finished before it could be killed"
    done = committed()
    assert 0 < done < n, err.decode()[-2000:]

    ctx = StepContext(show_progress=False)
    sel = IFD(keep=1.0, max_ifd=None, cache=str(tmp_path)).select(Dataset.from_list(rows[:n]), ctx)
    assert sel.stats["cache_hits"] == done
    assert sel.stats["rows_scored"] == n - done
    assert np.isfinite(sel.scores).all()


@pytest.mark.slow
def test_curate_writes_ifd_scores_as_columns(rows: list[dict], ctx: StepContext,
                                             tmp_path: Path) -> None:
    ds = Dataset.from_list(rows[:4])
    result = curate(ds, [IFD(keep=3, max_ifd=None, cache=str(tmp_path)),
                         {"random": {"keep": 2, "seed": 0}}], ctx=ctx)
    assert "ifd_score" in result.dataset.column_names
    removed = result.removed.to_pydict()
    assert len(removed["ifd_score"]) == 2 and all(np.isfinite(removed["ifd_score"]))
    report = result.manifest.steps[0]
    assert report.stats["model"]["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert report.stats["rows_scored"] == 4 and report.tokens_scored > 0
