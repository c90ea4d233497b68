"""Decontamination against real evaluation files.

T0's Rotten Tomatoes prompts really contain SST-2 test sentences (SST-2 was built from Rotten
Tomatoes reviews): the step must find them, name the evaluation file, and keep the rows that are
not in it. GSM8K (question/answer records) needs an explicit field mapping, like any reader input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from datadiet.cli import main
from datadiet.pipeline.curate import curate
from datadiet.pipeline.io import iter_jsonl
from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.decontaminate import CONTAMINATED, Decontaminate, ngram_hashes


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict]:
    rt = list(iter_jsonl(shared_data / "sft" / "t0_train" / "rotten_tomatoes_Movie_Expressed_Sentiment.jsonl"))
    return rt[:40]


def sst2_sentences(path: Path) -> set[str]:
    return {line.split(" ", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()}


def test_ngram_hashes() -> None:
    text = "One two three, four FIVE six seven"
    assert len(ngram_hashes(text, 3)) == 5 and len(ngram_hashes(text, 8)) == 0
    assert ngram_hashes("four five six", 3)[0] == ngram_hashes(text, 3)[3]  # case, punctuation
    assert len(set(ngram_hashes(text, 2).tolist())) == 6


def test_finds_real_sst2_test_sentences_in_t0(rows: list[dict], shared_data: Path) -> None:
    assert STEP_REGISTRY["decontaminate"] is Decontaminate
    sst2 = shared_data / "icl" / "sst2"
    step = Decontaminate(eval_sets=[str(sst2 / "dev.txt"), str(sst2 / "test.txt")])
    sel = step.select(Dataset.from_list(rows), StepContext(show_progress=False))
    test_sentences, dev_sentences = sst2_sentences(sst2 / "test.txt"), sst2_sentences(sst2 / "dev.txt")
    review = [r["prompt"].split(" The sentiment expressed")[0].strip() for r in rows]
    in_test = np.asarray([t in test_sentences for t in review])
    long_enough = np.asarray([len(ngram_hashes(t, 13)) > 0 for t in review])
    assert (in_test & long_enough).sum() >= 5  # the leak is real
    assert not any(t in dev_sentences for t in review)  # and the dev split is clean
    # every review that is a whole SST-2 test sentence of 13+ words is caught, and named
    assert not sel.keep[in_test & long_enough].any()
    assert set(sel.reason_detail[~sel.keep]) == {"test.txt"}
    assert sel.stats["removed_per_eval_set"]["dev.txt"] == 0
    assert set(sel.reason_kind[~sel.keep]) == {CONTAMINATED}
    assert sel.stats["removed_per_eval_set"]["test.txt"] == int((~sel.keep & (sel.reason_detail == "test.txt")).sum())
    assert np.all(sel.scores[sel.keep] == 0) and np.all(sel.scores[~sel.keep] > 0)


def test_mapped_eval_records_and_spec_errors(rows: list[dict], shared_data: Path,
                                             tmp_path: Path) -> None:
    gsm = shared_data / "math" / "gsm8k_test.jsonl"
    leaked = next(iter_jsonl(gsm))
    train = [{"instruction": "Solve the problem step by step.", "input": leaked["question"],
              "output": "Let me think."}] + [
        {"instruction": "Classify the review.", "input": r["prompt"], "output": r["completion"]}
        for r in rows[:5] if len(r["prompt"].split()) < 13]
    ds = Dataset.from_list(train)
    spec = {"decontaminate": {"eval_sets": [
        {"path": str(gsm), "fields": {"prompt": "question", "completion": "answer"}}]}}
    result = curate(ds, [spec])
    assert result.why(result.removed.column("id")[0].as_py()) == \
        "decontaminate: contaminated-by:gsm8k_test.jsonl"
    assert len(result.dataset) == len(train) - 1
    with pytest.raises(ValueError, match="no such file"):
        Decontaminate(eval_sets=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="unknown field 'question'"):
        Decontaminate(eval_sets=[{"path": str(gsm), "fields": {"question": "q"}}])
    with pytest.raises(ValueError, match="needs eval_sets"):
        Decontaminate()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: missing text field"):
        Decontaminate(eval_sets=[str(bad)]).select(ds, StepContext(show_progress=False))


def test_the_specs_field_mapping_reaches_eval_sets(shared_data: Path, tmp_path: Path) -> None:
    """GSM8K train with a leaked test row, read through `fields:`; the eval set has no `fields`.

    The eval set has the training data's shape, so the spec's mapping must read it too (before,
    the run stopped at `gsm8k_test.jsonl:1: missing text field 'text'`).
    """
    train_rows = list(iter_jsonl(shared_data / "math" / "gsm8k_train.jsonl"))[:30]
    leaked = next(iter_jsonl(shared_data / "math" / "gsm8k_test.jsonl"))
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in [*train_rows, leaked]))
    spec = tmp_path / "sft.yaml"
    spec.write_text(f"fields: {{prompt: question, completion: answer}}\nsteps:\n"
                    f"  - decontaminate: {{eval_sets: [{shared_data / 'math' / 'gsm8k_test.jsonl'}]}}\n")
    out = tmp_path / "out"
    assert main(["curate", str(corpus), "--spec", str(spec), "--out", str(out)]) == 0
    kept = Dataset.from_parquet([str(p) for p in sorted(out.rglob("data-*.parquet"))])
    assert leaked["question"] not in kept["question"]
    assert len(kept) >= 28  # GSM8K train shares a 13-gram with its test set now and then
