"""The training stage: packing, a tiny model learning real text, exact resume, accumulation, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset

from datadiet.kernels.hf_checkpoint import load_llama
from datadiet.pipeline.models.tokenizer import ByteTokenizer
from datadiet.pipeline.stages.training import (
    DEFAULT_CONFIG,
    IGNORE_INDEX,
    TrainConfig,
    compare_runs,
    flops_to_reach,
    load_text_dataset,
    lr_at,
    pack_dataset,
    pack_pairs,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> object:
    """~60 KB of Shakespeare as a Dataset of speeches (paragraphs)."""
    from datasets import Dataset

    text = (shared_data / "lm" / "tinyshakespeare.txt").read_text()[:60_000]
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    return Dataset.from_dict({"id": [str(i) for i in range(len(paras))], "text": paras})


@pytest.fixture(scope="module")
def curated_dir(corpus: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus laid out the way ``datadiet curate`` writes its output folder."""
    out = tmp_path_factory.mktemp("curated")
    corpus.to_parquet(str(out / "data-00000-of-00001.parquet"))
    (out / "removed").mkdir()
    (out / "manifest.json").write_text("{}")
    return out


def small_config(**overrides: object) -> TrainConfig:
    base = dict(
        tokenizer="bytes", model="tiny", seq_len=64, batch_size=4, grad_accum=1, max_steps=12,
        lr=3e-3, warmup_steps=3, eval_every=6, eval_fraction=0.1, max_eval_blocks=16,
        checkpoint_every=0, seed=3, save_model=False, num_threads=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


def curve(report: dict) -> list[float]:
    return [row["loss"] for row in report["loss_curve"]]


# -- data --------------------------------------------------------------------------------------


def test_pack_dataset_blocks_overlap_by_one_token(corpus: object) -> None:
    tok = ByteTokenizer()
    packed = pack_dataset(corpus, tok, seq_len=32)
    stream = []
    for text in corpus["text"]:
        stream += [*text.encode("utf-8"), tok.eos_token_id]
    assert packed.n_tokens == len(stream)
    assert packed.blocks.shape == ((len(stream) - 1) // 32, 33)
    # every token is a target exactly once: block i starts where block i-1's inputs end
    assert torch.equal(packed.blocks[1, 0], packed.blocks[0, 32])
    assert packed.blocks[:, :-1].reshape(-1).tolist() == stream[: len(packed) * 32]
    assert (packed.blocks == tok.eos_token_id).any()  # documents are separated


def test_load_text_dataset_reads_curated_output(curated_dir: Path, corpus: object) -> None:
    ds = load_text_dataset(curated_dir)
    assert len(ds) == len(corpus)
    assert ds["text"][:3] == corpus["text"][:3]


def test_config_from_yaml_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny", "lr": 1e-3, "seq_len": 128}))
    cfg = TrainConfig.from_yaml(path, max_steps=5)
    assert (cfg.lr, cfg.seq_len, cfg.max_steps) == (1e-3, 128, 5)
    assert TrainConfig.model_validate(yaml.safe_load(cfg.to_yaml())) == cfg
    with pytest.raises(ValueError):
        TrainConfig(learning_rate=1.0)  # typo'd keys are errors, not silently ignored
    with pytest.raises(ValueError):
        TrainConfig(model="enormous")
    assert TrainConfig(max_tokens=10_000, batch_size=2, seq_len=100).steps_for(world_size=2) == 25


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)


# -- training --------------------------------------------------------------------------------


def test_tiny_model_learns_real_text(corpus: object, tmp_path: Path) -> None:
    report = train(small_config(max_steps=40, eval_every=20), tmp_path / "run", dataset=corpus)
    evals = [e["eval_loss"] for e in report["evals"]]
    assert [e["step"] for e in report["evals"]] == [0, 20, 40]
    assert evals[0] == pytest.approx(math.log(320), abs=0.3)  # starts near uniform
    assert evals[-1] < evals[0] - 1.5  # bytes of English are far from uniform
    assert sum(curve(report)[-5:]) / 5 < sum(curve(report)[:5]) / 5

    # the ledger: training FLOPs are 6·N·D + attention, from the model's shape
    stages = {s["name"]: s for s in report["ledger"]["stages"]}
    tokens = 40 * 4 * 64
    assert stages["train"]["tokens"] == tokens
    from datadiet.kernels.model import LlamaConfig

    shape = LlamaConfig.from_dict(report["model"]).shape()
    assert stages["train"]["flops"] == pytest.approx(shape.flops(tokens, 64, training=True))
    assert stages["train"]["seconds"] > 0 and stages["train"]["peak_memory_bytes"] > 0
    assert stages["eval"]["tokens"] > 0 and stages["eval"]["flops"] > 0
    fl = report["flops_at_eval_loss"]
    assert [r["flops"] for r in fl] == sorted(r["flops"] for r in fl)
    assert flops_to_reach(report, evals[1]) == pytest.approx(fl[1]["flops"])
    assert flops_to_reach(report, 0.0) is None
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["final_eval_loss"] == pytest.approx(evals[-1])


def test_resume_reproduces_the_uninterrupted_run_exactly(corpus: object, tmp_path: Path) -> None:
    cfg = small_config(max_steps=14, checkpoint_every=0)
    full = train(cfg, tmp_path / "full", dataset=corpus)

    part = train(cfg, tmp_path / "cut", dataset=corpus, stop_at_step=8)
    assert part["status"] == "stopped" and len(part["loss_curve"]) == 8
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["ledger"]
    part_seconds = {s["name"]: s for s in part["ledger"]["stages"]}["train"]["seconds"]
    saved_seconds = {s["name"]: s for s in saved["stages"]}["train"]["seconds"]
    assert 0.5 * part_seconds < saved_seconds <= part_seconds  # written mid-stage, time kept
    resumed = train(cfg, tmp_path / "cut", dataset=corpus)
    assert resumed["status"] == "completed"
    assert curve(resumed) == curve(full)  # bit-for-bit, not approximately
    assert resumed["evals"] == full["evals"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_stage = {s["name"]: s for s in resumed["ledger"]["stages"]}["train"]
    assert train_stage["tokens"] == 14 * 4 * 64  # the ledger carries over the resumed part
    assert train_stage["seconds"] > saved_seconds  # ... and its seconds: tokens/s stays honest


def test_gradient_accumulation_matches_a_larger_batch(corpus: object, tmp_path: Path) -> None:
    big = train(small_config(batch_size=4, grad_accum=1, max_steps=8), tmp_path / "a", dataset=corpus)
    acc = train(small_config(batch_size=2, grad_accum=2, max_steps=8), tmp_path / "b", dataset=corpus)
    assert big["tokens_per_step"] == acc["tokens_per_step"]
    assert curve(acc) == pytest.approx(curve(big), rel=1e-5, abs=1e-5)
    assert acc["final_eval_loss"] == pytest.approx(big["final_eval_loss"], abs=1e-5)


def test_ddp_two_processes_match_one(curated_dir: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU ranks (gloo) × batch 2 equals 1 process × batch 4."""
    cfg = small_config(batch_size=2, max_steps=6, eval_every=3, save_model=True)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(cfg.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "datadiet.pipeline.stages.cli", "train", "--data", str(curated_dir),
           "--config", str(cfg_path), "--out", str(tmp_path / "ddp"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert ddp["world_size"] == 2

    single = train(small_config(batch_size=4, max_steps=6, eval_every=3), tmp_path / "one",
                   dataset=load_text_dataset(curated_dir))
    assert ddp["tokens_per_step"] == single["tokens_per_step"]
    assert curve(ddp) == pytest.approx(curve(single), rel=1e-4, abs=1e-4)
    assert ddp["final_eval_loss"] == pytest.approx(single["final_eval_loss"], abs=1e-4)
    assert (tmp_path / "ddp" / "model" / "config.json").exists()


def test_cli_train_then_generate(curated_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from datadiet.pipeline.stages.cli import main

    cfg = small_config(max_steps=6, eval_every=3, save_model=True)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    run = tmp_path / "run"
    assert main(["train", "--data", str(curated_dir), "--config", str(cfg_path), "--out", str(run),
                 "--quiet", "--set", "lr=2e-3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["train_tokens"] == 6 * 4 * 64
    report = json.loads((run / "report.json").read_text())
    assert report["config"]["lr"] == 2e-3

    assert main(["generate", "--model", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "8",
                 "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["prompt"] == "ROMEO:" and lines[0]["tokens"] >= 1
    gen_stage = lines[-1]["ledger"]["stages"][0]
    assert gen_stage["tokens"] > 0 and gen_stage["flops"] > 0

    other = dict(report, flops_at_eval_loss=[dict(r, flops=r["flops"] / 2)
                                             for r in report["flops_at_eval_loss"]])
    cmp = compare_runs(report, other)
    assert cmp["flops_saved_x"] == pytest.approx(2.0)


@pytest.mark.slow
def test_fine_tune_smollm2(corpus: object, tmp_path: Path) -> None:
    """``init_from: default`` fine-tunes SmolLM2 with its own tokenizer and saves a loadable model."""

    cfg = small_config(tokenizer=None, init_from="default", seq_len=32, batch_size=1,
                       max_steps=2, eval_every=2, max_eval_blocks=2, lr=1e-5, warmup_steps=0,
                       save_model=True)
    report = train(cfg, tmp_path / "ft", dataset=corpus.select(range(40)))
    assert report["model"]["vocab_size"] == 49152 and report["n_params"] > 100e6
    assert all(math.isfinite(x) for x in curve(report))
    assert report["evals"][0]["eval_loss"] < 6.0  # a pretrained model, not a random one
    again = load_llama(tmp_path / "ft" / "model")
    assert again.config.n_layers == 30
    assert (tmp_path / "ft" / "model" / "tokenizer.json").exists()


def test_built_in_config_is_the_commented_yaml_and_matches_the_defaults() -> None:
    text = DEFAULT_CONFIG.read_text()
    assert text.count("#") > 20  # commented for the user who copies it
    assert TrainConfig.default() == TrainConfig()  # the YAML and the field defaults agree
    assert TrainConfig.default(max_steps=7, lr=None).max_steps == 7


def test_response_only_eval_scores_just_the_answers(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    packed = pack_pairs(["Question: 2+2?\n", "x" * 100], ["4", "a long answer"], tok, seq_len=16)
    assert packed.blocks.shape == (2, 17) and packed.targets.shape == (2, 16)
    first = packed.targets[0]
    assert [int(t) for t in first if t != IGNORE_INDEX] == [ord("4"), tok.eos_token_id]
    assert tok.decode(packed.blocks[0, : 15 + 2].tolist()).startswith("Question: 2+2?\n4")
    second = [int(t) for t in packed.targets[1] if t != IGNORE_INDEX]
    assert tok.decode(second) == "a long answer"  # the end-of-text id decodes to nothing
    assert packed.n_tokens == 2 + 14

    corpus = [{"text": "Question: what is two and two? Answer: four. " * 3} for _ in range(20)]
    run = train(small_config(max_steps=4, eval_every=2), tmp_path / "run",
                dataset=Dataset.from_list(corpus), eval_dataset=packed)
    assert run["data"]["eval_blocks"] == 2
    eval_stage = {s["name"]: s for s in run["ledger"]["stages"]}["eval"]
    assert eval_stage["tokens"] == 3 * packed.n_tokens  # three evals, answers only
