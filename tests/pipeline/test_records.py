"""Fine-tuning records: detection, explicit mappings, rendering, and rows that fit no format.

Real rows: T0 prompt/completion files and GSM8K question/answer from the real-data kit; the chat
and Alpaca rows are built from those same T0 rows so every string is real text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from datadiet.cli import main
from datadiet.pipeline.curate import curate, load_spec_fields
from datadiet.pipeline.io import MANIFEST_FILE, DataError, iter_jsonl, load_corpus
from datadiet.pipeline.records import (
    RecordFormat,
    detect_format,
    parse_fields,
    problem_with,
    render_text,
    turns,
)

T0_FILE = "sciq_Direct_Question_Closed_Book_.jsonl"


@pytest.fixture(scope="module")
def t0_rows(shared_data: Path) -> list[dict]:
    return list(iter_jsonl(shared_data / "sft" / "t0_train" / T0_FILE))[:40]


def chat_of(rows: list[dict]) -> dict:
    """One multi-turn conversation from consecutive T0 rows."""
    messages = [{"role": "system", "content": "Answer briefly."}]
    for r in rows:
        messages += [{"role": "user", "content": r["prompt"]},
                     {"role": "assistant", "content": r["completion"]}]
    return {"messages": messages}


def test_detection_of_each_format() -> None:
    assert detect_format(["prompt", "completion", "id"]).kind == "prompt_completion"
    assert detect_format(["instruction", "output"]).kind == "alpaca"
    assert detect_format(["instruction", "input", "output"]).kind == "alpaca"
    assert detect_format(["messages"]).kind == "chat"
    assert detect_format(["text", "url"]).kind == "text"
    assert detect_format(["body"], text_field="body").column("text") == "body"
    with pytest.raises(ValueError, match=r"missing text field 'text' \(fields: answer, question\)"):
        detect_format(["question", "answer"])
    with pytest.raises(ValueError, match="fit several formats .*chat, prompt_completion"):
        detect_format(["messages", "prompt", "completion"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"prompt": "question"}, "format prompt_completion needs 'completion'"),
        ({"prompt": "q", "output": "a"}, "mix the formats alpaca and prompt_completion"),
        ({"question": "q"}, "unknown field 'question'"),
        ({"prompt": "q", "completion": 3}, "'completion' must map to a column name"),
        ("sharegpt", "unknown format 'sharegpt'"),
        (["prompt"], "expected auto, a format name or a mapping"),
    ],
)
def test_field_mapping_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fields(value)


def test_explicit_mapping_reads_gsm8k_as_prompt_completion(shared_data: Path, tmp_path: Path) -> None:
    gsm = shared_data / "math" / "gsm8k_test.jsonl"
    with pytest.raises(DataError, match=r"gsm8k_test\.jsonl:1: missing text field"):
        load_corpus(gsm)
    spec = tmp_path / "spec.yaml"
    spec.write_text("fields: {prompt: question, completion: answer}\nsteps:\n  - exact_dedup: {}\n")
    fmt = load_spec_fields(spec)
    assert fmt == RecordFormat("prompt_completion", (("prompt", "question"), ("completion", "answer")))
    loaded = load_corpus(gsm, fields=fmt)
    first = next(iter_jsonl(gsm))
    assert len(loaded.dataset) == 1319
    assert loaded.dataset[0]["question"] == first["question"]
    assert loaded.dataset[0]["text"] == first["question"] + first["answer"]
    assert turns(loaded.dataset[0], fmt) == [(first["question"], first["answer"])]


def test_multi_turn_chat_turns_carry_the_conversation(t0_rows: list[dict]) -> None:
    record = chat_of(t0_rows[:3])
    fmt = detect_format(record)
    pairs = turns(record, fmt)
    assert len(pairs) == 3  # one per assistant turn
    assert [r for _, r in pairs] == [r["completion"] for r in t0_rows[:3]]
    first_prompt, second_prompt = pairs[0][0], pairs[1][0]
    assert first_prompt == f"System: Answer briefly.\n\nUser: {t0_rows[0]['prompt']}\n\nAssistant: "
    assert second_prompt.startswith(first_prompt + t0_rows[0]["completion"])
    assert second_prompt.endswith(f"User: {t0_rows[1]['prompt']}\n\nAssistant: ")
    assert render_text(record, fmt).endswith(t0_rows[2]["completion"])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": "not a list"}, "field 'messages' must be a list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, r"messages\[0\]: role 'bot'"),
        ({"messages": [{"role": "assistant", "content": None}]}, r"messages\[0\]: content is NoneType"),
        ({"messages": [{"role": "assistant", "content": "x"}, "hi"]}, r"messages\[1\] must be an object"),
    ],
)
def test_bad_chat_rows_name_the_message(record: dict, message: str) -> None:
    problem = problem_with(record, parse_fields("chat"))
    assert problem is not None and re.search(message, problem), problem


def test_reader_detects_t0_keeps_columns_and_names_bad_rows(t0_rows: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "t0.jsonl"
    bad = {"prompt": t0_rows[1]["prompt"], "answer": "no completion field"}
    path.write_text("".join(json.dumps(r) + "\n" for r in [t0_rows[0], bad, *t0_rows[2:6]]))
    with pytest.raises(DataError, match=r"t0\.jsonl:2: missing prompt_completion field 'completion'"):
        load_corpus(path)
    loaded = load_corpus(path, on_error="skip")
    assert loaded.skipped_count == 1 and loaded.skipped[0].line == 2
    ds = loaded.dataset
    assert loaded.record_format.kind == "prompt_completion"
    assert ds.column_names == ["id", "text", "prompt", "completion"]
    assert ds["completion"] == [r["completion"] for r in [t0_rows[0], *t0_rows[2:6]]]
    assert ds["text"][0] == t0_rows[0]["prompt"] + t0_rows[0]["completion"]


def test_alpaca_and_chat_files_round_trip(t0_rows: list[dict], tmp_path: Path) -> None:
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": "Answer the question.", "input": r["prompt"],
                                          "output": r["completion"]}) + "\n" for r in t0_rows[:4]))
    ds = load_corpus(alpaca).dataset
    assert ds["text"][0] == f"Answer the question.\n\n{t0_rows[0]['prompt']}\n\n{t0_rows[0]['completion']}"
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(chat_of(t0_rows[i : i + 2])) + "\n" for i in range(0, 8, 2)))
    loaded = load_corpus(chat)
    assert loaded.record_format.kind == "chat" and len(loaded.dataset) == 4
    assert len(turns(loaded.dataset[0], loaded.record_format)) == 2  # stored as JSON, read back


def test_curate_t0_with_a_pretraining_step_keeps_input_columns(
    t0_rows: list[dict], tmp_path: Path
) -> None:
    path = tmp_path / "t0.jsonl"
    rows = t0_rows[:10] + t0_rows[:3]  # three exact repeats
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n")
    out = tmp_path / "out"
    assert main(["curate", str(path), "--spec", str(spec), "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(next(out.glob("*.parquet")))
    assert table.column_names == ["id", "prompt", "completion"]
    assert table.num_rows == 10
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["input"]["record_format"]["format"] == "prompt_completion"
    assert manifest["steps"][0]["removed"] == {"exact-duplicate-of": 3}


def test_python_api_renders_instruction_datasets(t0_rows: list[dict]) -> None:
    ds = Dataset.from_list(t0_rows[:8] + t0_rows[:2])
    result = curate(ds, ["exact_dedup"])
    assert len(result.dataset) == 8
    assert set(result.dataset.column_names) >= {"prompt", "completion", "text"}
    with pytest.raises(ValueError, match="needs instruction data"):
        curate(Dataset.from_dict({"question": ["q"], "answer": ["a"]}), ["exact_dedup"])
