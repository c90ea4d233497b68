"""Supervised fine-tuning on pre-packed pairs: the loss is taken on the responses only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datadiet.pipeline.models.tokenizer import ByteTokenizer
from datadiet.pipeline.stages.training import PackedData, TrainConfig, pack_pairs, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs(shared_data: Path) -> PackedData:
    folder = shared_data / "sft" / "t0_train"
    rows = [json.loads(line) for path in sorted(folder.glob("*.jsonl"))[:4]
            for line in path.read_text(encoding="utf-8").splitlines()[:2]]
    return pack_pairs([r["prompt"] for r in rows],
                      [r["completion"].replace("<|endoftext|>", "") for r in rows],
                      ByteTokenizer(), 64)


def _config(**overrides: object) -> TrainConfig:
    settings = dict(tokenizer="bytes", model="tiny", seq_len=64, batch_size=8, max_steps=1,
                    lr=1e-9, warmup_steps=0, eval_every=1, max_eval_blocks=8,
                    checkpoint_every=0, seed=0, save_model=False, num_threads=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_training_loss_is_the_response_loss(pairs: PackedData, tmp_path: Path) -> None:
    # one step over all 8 pairs at a negligible learning rate: the step's training loss is
    # the eval loss of the same blocks with the same (response-only) targets
    report = train(_config(), tmp_path / "pairs", dataset=pairs, eval_dataset=pairs)
    train_loss = report["loss_curve"][0]["loss"]
    assert train_loss == pytest.approx(report["final_eval_loss"], abs=1e-4)
    # as plain blocks (every token a target, prompts included) the same step differs
    plain = PackedData(pairs.blocks, pairs.n_tokens, pairs.n_documents)
    other = train(_config(), tmp_path / "plain", dataset=plain, eval_dataset=pairs)
    assert abs(other["loss_curve"][0]["loss"] - train_loss) > 1e-3


def test_pre_packed_pairs_need_an_eval_set(pairs: PackedData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need an eval set"):
        train(_config(), tmp_path / "run", dataset=pairs)
