"""`response_rules` and `longest` on real T0 and GSM8K rows: the rules catch echoes, non-answers
and cut-off answers, and spare real answers (labels, extractive spans, worked solutions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets import Dataset

from datadiet.experiments.sft_pool import GENERIC_ANSWERS, PoolMix, build_sft_pool
from datadiet.pipeline.curate import curate
from datadiet.pipeline.steps import build_step
from datadiet.selectors.response_rules import check_pair


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[list[dict], dict]:
    files = build_sft_pool(tmp_path_factory.mktemp("pool"), shared_data, PoolMix.quick())
    rows = [json.loads(line) for line in files.pool.read_text(encoding="utf-8").splitlines()]
    return rows, json.loads(files.truth.read_text(encoding="utf-8"))


def _removed(spec: list, rows: list[dict]) -> dict[str, str]:
    result = curate(Dataset.from_list(rows), spec)
    removed = result.removed.to_pylist()
    return {r["id"]: r["reason"] for r in removed}


def test_rules_remove_planted_echoes_non_answers_and_cuts(pool: tuple[list[dict], dict]) -> None:
    rows, truth = pool
    removed = _removed([{"response_rules": {}}], rows)
    kinds = truth["kinds"]
    by_kind = {k: sum(kinds[i] == k for i in removed) for k in set(kinds.values())}
    counts = truth["counts"]
    assert by_kind.get("restated", 0) == counts["restated"]
    assert by_kind.get("generic", 0) == counts["generic"]
    assert by_kind.get("truncated", 0) >= 0.5 * counts["truncated"]
    # real answers, long worked solutions included, are spared (a handful of real T0 answers
    # lack final punctuation and are counted as cut off)
    assert by_kind.get("long_good", 0) == 0
    assert by_kind.get("clean", 0) <= 0.03 * counts["clean"]
    assert {removed[i] for i in removed if kinds[i] == "restated"} == {"response_rules:restates"}
    assert {removed[i] for i in removed if kinds[i] == "generic"} == {"response_rules:generic"}


def test_each_rule_alone_and_its_limits() -> None:
    passage = ("The Argentine government remained neutral until the last days of the war, but "
               "quietly tolerated the entry of leaders who fled Germany in 1945.")
    question = f"Read the passage and answer.\n{passage}\nWhen did the leaders flee?"
    assert check_pair(question, question) == "restates"
    assert check_pair(question, "Question: " + question) == "restates"
    assert check_pair(question, "who fled Germany in 1945") is None  # an extractive span
    assert check_pair(question, "in 1945") is None
    for answer in GENERIC_ANSWERS:
        assert check_pair(question, answer) == "generic", answer
    long_hedge = "It depends. " + passage + " " + passage  # a real answer may hedge
    assert check_pair(question, long_hedge, checks=["generic"]) is None
    cut = "The government remained neutral until the last days of the war but quietly tolerated"
    assert check_pair(question, cut) == "truncated"
    assert check_pair(question, cut + ".") is None
    assert check_pair(question, "positive") is None  # a label is never "cut off"
    assert check_pair(question, cut, checks=["restates", "generic"]) is None


def test_chat_rows_fail_on_any_assistant_turn() -> None:
    rows = [{"id": "a", "messages": [
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "Seven is a prime number."},
        {"role": "user", "content": "And an even one?"},
        {"role": "assistant", "content": "I don't know."}]},
        {"id": "b", "messages": [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "Seven."}]}]
    assert _removed([{"response_rules": {}}], rows) == {"a": "response_rules:generic"}


def test_bad_parameters_fail_when_the_spec_is_built() -> None:
    for params in ({"checks": ["restates", "typo"]}, {"checks": "generic"}, {"checks": []},
                   {"restate_containment": 0}, {"generic_max_words": 0},
                   {"patterns": ["(unclosed"]}):
        with pytest.raises(ValueError):
            build_step("response_rules", params)


def test_longest_keeps_the_longest_responses(pool: tuple[list[dict], dict]) -> None:
    rows, _ = pool
    removed = _removed([{"longest": {"keep": 0.25}}], rows)
    kept = [r for r in rows if r["id"] not in removed]
    assert len(kept) == round(0.25 * len(rows))
    def words(row: dict) -> int:
        return len(re.findall(r"\w+", row["completion"]))

    assert min(map(words, kept)) >= max(words(r) for r in rows if r["id"] in removed)
    assert set(removed.values()) == {"longest:shorter"}
