"""build_prompts: SST-2 demonstrations chosen by BM25 (datadiet.prompting.demos), laid out with the
sentiment preset and compressed by the offline SmolLM2 scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from datadiet.flows import PromptParams, build_prompts
from tests.flows.helpers import artifacts_of, runs_named, task_run_states


@pytest.fixture(scope="module")
def sst2(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sst2")
    paths = {}
    for name, source, n in (("pool", "train", 30), ("eval", "test", 3)):
        lines = (shared_data / "icl" / "sst2" / f"{source}.txt").read_text().splitlines()[:n]
        rows = [{"id": f"{name}-{i}", "text": line[2:], "label": "positive" if line[0] == "1"
                 else "negative"} for i, line in enumerate(lines)]
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def test_prompts_are_compressed_and_reported(prefect_api: str, sst2: dict, tmp_path: Path) -> None:
    params = dict(pool=str(sst2["pool"]), eval_set=str(sst2["eval"]), out=str(tmp_path / "out"),
                  k=3, strategy="bm25", ordering="as_selected", template="sentiment",
                  compress_rate=0.5, storage=str(tmp_path / "storage"))
    state = build_prompts(**params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    rows = [json.loads(line) for line in Path(result["prompts"]).read_text().splitlines()]
    queries = [json.loads(line) for line in sst2["eval"].read_text().splitlines()]
    pool = {r["id"]: r for r in map(json.loads, sst2["pool"].read_text().splitlines())}
    assert [r["id"] for r in rows] == [q["id"] for q in queries]
    for row, query in zip(rows, queries, strict=True):
        assert row["prompt"].startswith("Classify the sentiment of each review")  # verbatim
        assert row["prompt"].endswith(f"Review: {query['text']}\nSentiment:")  # query verbatim
        assert len(row["demonstrations"]) == 3 and set(row["demonstrations"]) <= set(pool)
        assert row["tokens_after"] < row["tokens_before"]
        for demo_id in row["demonstrations"]:  # every demonstration keeps its label word
            assert f"Sentiment: {pool[demo_id]['label']}" in row["prompt"]
    # BM25 picks, for each query, pool rows that share its words; not the same rows for all.
    assert len({tuple(r["demonstrations"]) for r in rows}) > 1
    assert result["tokens_after"] < result["tokens_before"]

    report = artifacts_of(state.state_details.flow_run_id)["prompts-eval-jsonl-report"]["data"]
    assert "Tokens per prompt" in report and "data:image/png;base64," in report
    names = runs_named(state.state_details.flow_run_id)
    assert names == {"flows": ["prompts for eval.jsonl from pool.jsonl → out/"],
                     "tasks": ["build prompts for eval.jsonl"]}
    again = build_prompts(**params, return_state=True)
    assert again.result() == result
    assert set(task_run_states(again.state_details.flow_run_id)) == {"Cached"}


def test_prompt_parameters_are_validated(sst2: dict, tmp_path: Path) -> None:
    files = dict(pool=str(sst2["pool"]), eval_set=str(sst2["eval"]), out=str(tmp_path))
    with pytest.raises(ValidationError, match="unknown template 'sentimnet'"):
        PromptParams.of_call(build_prompts.fn, {**files, "template": "sentimnet"})
    with pytest.raises(ValidationError, match="strategy"):
        PromptParams.of_call(build_prompts.fn, {**files, "strategy": "nearest"})
