"""The fine-tuning comparison (IFD vs random vs all T0 rows) at a tiny size, on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datadiet.experiments.comparison import small_train_config
from datadiet.experiments.finetuning import (
    EVAL_ROWS,
    POOL_ROWS,
    FinetuneSettings,
    finetuning_comparison,
    t0_pairs,
)
from datadiet.experiments.report import SavingsReport, write_savings_report
from datadiet.pipeline.models.tokenizer import train_bpe_tokenizer
from datadiet.pipeline.report import RunContext
from datadiet.pipeline.stages.training import train


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("finetune")
    texts = [f"{r['prompt']}\n{r['completion']}"
             for r in t0_pairs(shared_data / "sft" / "t0_train", slice(0, 40), 300, seed=1)]
    tokenizer = train_bpe_tokenizer(texts, 384, root / "tokenizer")
    base = small_train_config(True, tokenizer=str(tokenizer), max_steps=4, eval_every=2,
                              batch_size=4, seq_len=64, save_model=True)
    train(base, root / "base", dataset=[{"text": t} for t in texts])
    settings = FinetuneSettings(
        train=small_train_config(True, max_steps=4, eval_every=2, batch_size=4, seq_len=64,
                                 warmup_steps=1),
        pool=40, eval_pairs=10, keep=0.25, seeds=(0,), ifd_max_length=64)
    return root, finetuning_comparison(root / "ft", shared_data, root / "base" / "model", settings)


def test_pool_and_eval_rows_never_overlap(shared_data: Path) -> None:
    folder = shared_data / "sft" / "t0_train"
    pool = t0_pairs(folder, POOL_ROWS, 300, seed=0)
    held_out = t0_pairs(folder, EVAL_ROWS, 100, seed=0)
    assert len(pool) == 300 and len(held_out) == 100
    assert not {r["id"] for r in pool} & {r["id"] for r in held_out}
    assert not {r["prompt"] + r["completion"] for r in pool} & {
        r["prompt"] + r["completion"] for r in held_out}
    assert all("<|endoftext|>" not in r["completion"] for r in pool)


def test_arms_share_the_budget_and_ifd_pays_its_scoring(comparison: tuple[Path, dict]) -> None:
    root, summary = comparison
    table = summary["arms_table"]
    assert table["all"]["rows"] == 40 and table["ifd"]["rows"] == table["random"]["rows"] == 10
    assert summary["selections"]["ifd"]["flops"] > 0 == summary["selections"]["random"]["flops"]
    assert summary["savings"]["extra_flops"] == summary["selections"]["ifd"]["flops"]
    reports = {arm: json.loads((root / "ft" / "runs" / arm / "seed-0" / "report.json").read_text())
               for arm in ("all", "ifd", "random")}
    assert len({r["flops_per_step"] * r["total_steps"] for r in reports.values()}) == 1
    assert {r["config"]["init_from"] for r in reports.values()} == {str(root / "base" / "model")}
    evals = {s["name"]: s for s in reports["all"]["ledger"]["stages"]}["eval"]
    response_tokens = evals["tokens"] // len(reports["all"]["evals"])
    assert 0 < response_tokens < reports["all"]["data"]["eval_blocks"] * 64 // 2  # prompts masked


def test_report_shows_the_fine_tuning_part(comparison: tuple[Path, dict], tmp_path: Path) -> None:
    _, summary = comparison
    report = SavingsReport(context=RunContext(command="pytest", seeds=[0]), finetuning=summary)
    text = write_savings_report(tmp_path, report).read_text()
    assert "## Fine-tuning: selected vs random vs all instruction data" in text
    assert "| ifd |" in text and "| random |" in text
    assert (tmp_path / "finetuning_loss_vs_flops.png").stat().st_size > 10_000
