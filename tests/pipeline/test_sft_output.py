"""A fine-tuning selection's output loads into TRL's ``SFTTrainer`` as it is.

Input: real T0 instruction pairs (SQuAD-style reading comprehension) with real repeats, as
prompt/completion records and as chat messages; `datadiet curate` removes the repeats; the
curated folder goes to ``load_dataset`` and then straight into ``SFTTrainer`` (two steps, a
tiny random-weight Llama with SmolLM2's tokenizer and chat template).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset

from datadiet.cli import main
from datadiet.pipeline.models.loading import resolve_causal_lm

SOURCE = "sft/t0_train/adversarial_qa_dbert_answer_the_following_q.jsonl"


@pytest.fixture(scope="module")
def pairs(shared_data: Path) -> list[dict]:
    rows = [json.loads(line) for line in (shared_data / SOURCE).read_text().splitlines()[:24]]
    return rows + rows[:4]  # four repeats for the selection to remove


def _write_input(pairs: list[dict], shape: str, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i, r in enumerate(pairs):
            record = {"id": f"r{i}", "prompt": r["prompt"], "completion": r["completion"]} \
                if shape == "prompt_completion" else \
                {"id": f"r{i}", "messages": [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["completion"]}]}
            fh.write(json.dumps(record) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["prompt_completion", "chat"])
def test_sft_trainer_trains_on_the_curated_folder_as_it_is(pairs: list[dict], shape: str,
                                                           tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    data = tmp_path / "in.jsonl"
    _write_input(pairs, shape, data)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"fields: {shape}\nsteps:\n- exact_dedup: {{}}\n")
    out = tmp_path / "curated"
    assert main(["curate", str(data), "--spec", str(spec), "--out", str(out), "--quiet"]) == 0

    dataset = load_dataset(str(out), split="train")
    columns = {"prompt_completion": {"id", "prompt", "completion"}, "chat": {"id", "messages"}}
    assert set(dataset.column_names) == columns[shape]  # the input's columns, nothing rendered
    assert len(dataset) == 24
    if shape == "chat":
        assert dataset[0]["messages"] == [{"role": "user", "content": pairs[0]["prompt"]},
                                          {"role": "assistant",
                                           "content": pairs[0]["completion"]}]
    else:
        assert dataset[0]["completion"] == pairs[0]["completion"]

    tokenizer = AutoTokenizer.from_pretrained(resolve_causal_lm(None))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2,
                     learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, max_length=256, dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    result = trainer.train()
    assert result.global_step == 2
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # what TRL trained on is the curated row: its prompt and its completion, tokenized
    trained = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert pairs[0]["prompt"][:60] in trained
    assert pairs[0]["completion"].removesuffix("<|endoftext|>") in trained
