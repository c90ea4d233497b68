"""`datadiet train --data` on a token file written by `datadiet export`: the saved-compute run
reads the same bytes a user's Megatron or nanoGPT job reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from datadiet.cli import main
from datadiet.pipeline.models.tokenizer import ByteTokenizer
from datadiet.pipeline.stages.training import pack_dataset, pack_token_file
from datadiet.pipeline.tokens import read_token_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def speeches(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 KB of Shakespeare, one speech a row, as JSONL."""
    text = (shared_data / "lm" / "tinyshakespeare.txt").read_text()[:40_000]
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    path = tmp_path_factory.mktemp("speeches") / "speeches.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                            for i, t in enumerate(paras)))
    return path


@pytest.fixture(scope="module")
def exported(speeches: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tokens"
    assert main(["export", str(speeches), "--out", str(out), "--tokenizer", "bytes"]) == 0
    return out


def test_blocks_from_the_token_file_equal_blocks_tokenized_in_the_run(speeches: Path,
                                                                      exported: Path) -> None:
    rows = [json.loads(line) for line in speeches.read_text().splitlines()]
    ds = Dataset.from_dict({"text": [r["text"] for r in rows]})
    in_run = pack_dataset(ds, ByteTokenizer(), seq_len=64)
    for path in (exported, exported / "tokens.bin"):
        from_file = pack_token_file(path, ByteTokenizer(), seq_len=64)
        assert torch.equal(from_file.blocks, in_run.blocks)
        assert from_file.n_documents == len(rows) and from_file.n_tokens == in_run.n_tokens


def test_train_runs_a_few_steps_on_the_exported_file(exported: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(exported), "--out", str(run), "--max-steps", "4",
                 "--quiet", "--set", "tokenizer=bytes", "--set", "model=tiny",
                 "--set", "seq_len=64", "--set", "batch_size=4", "--set", "eval_every=2",
                 "--set", "save_model=false", "--set", "checkpoint_every=0",
                 "--set", "num_threads=1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["train_tokens"] == 4 * 4 * 64
    report = json.loads((run / "report.json").read_text())
    tokenize = next(s for s in report["ledger"]["stages"] if s["name"] == "tokenize")
    assert tokenize["tokens"] == len(read_token_file(exported).tokens)


def test_a_token_file_of_another_tokenizer_is_refused(exported: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """The run's tokenizer (SmolLM2's, the default) did not make these ids: exit 2, no run."""
    assert main(["train", "--data", str(exported), "--out", str(tmp_path / "run"),
                 "--max-steps", "1", "--quiet", "--set", "model=tiny"]) == 2
    err = capsys.readouterr().err
    assert str(exported) in err and "made by the tokenizer bytes" in err
    assert not (tmp_path / "run" / "report.json").exists()
