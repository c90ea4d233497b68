"""The fine-tuning stage at a tiny size, on the planted pool built from the real-data kit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datadiet.experiments.comparison import small_train_config
from datadiet.experiments.finetuning import (
    DEFAULT_SFT_SPEC,
    break_even,
    finetuning_stage,
    removal_precision,
)
from datadiet.experiments.report import SavingsReport, headline_numbers, write_savings_report
from datadiet.experiments.sft_pool import PLANTED_KINDS, PoolMix, build_sft_pool
from datadiet.pipeline.models.tokenizer import train_bpe_tokenizer
from datadiet.pipeline.report import RunContext

TINY_POOL = PoolMix(rows=120, eval_rows=16)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    return build_sft_pool(tmp_path_factory.mktemp("pool"), shared_data, TINY_POOL)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, pool) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("finetune")
    rows = [json.loads(line) for line in pool.pool.read_text(encoding="utf-8").splitlines()]
    texts = [f"{r['prompt']}\n{r['completion']}" for r in rows]
    tokenizer = train_bpe_tokenizer(texts, 384, root / "tokenizer")
    budget = small_train_config(True, tokenizer=str(tokenizer), max_steps=4, eval_every=2,
                                batch_size=4, seq_len=64, warmup_steps=1)
    summary = finetuning_stage(root / "ft", pool.pool, pool.eval, DEFAULT_SFT_SPEC, budget,
                               steps=4, base_corpus=[{"text": t} for t in texts],
                               truth=pool.truth, seeds=(0,))
    return root, summary


def test_pool_plants_each_problem_in_its_stated_share(pool, shared_data: Path) -> None:
    truth = json.loads(pool.truth.read_text(encoding="utf-8"))
    counts = TINY_POOL.counts()
    kinds = list(truth["kinds"].values())
    assert len(kinds) == TINY_POOL.rows
    for kind, n in counts.items():
        assert kinds.count(kind) == n
    for kind in (*PLANTED_KINDS, "long_good"):
        assert counts[kind] == round(getattr(TINY_POOL, kind) * TINY_POOL.rows) > 0
    rows = {json.loads(line)["id"]: json.loads(line)
            for line in pool.pool.read_text(encoding="utf-8").splitlines()}
    assert set(rows) == set(truth["kinds"]) and all(i.startswith("row-") for i in rows)
    assert "kind" not in next(iter(rows.values()))  # no method can read the ground truth
    for copy, original in truth["duplicate_of"].items():  # near copies: same answer
        assert rows[copy]["completion"] == rows[original]["completion"]
        assert rows[copy]["prompt"] != rows[original]["prompt"]
    held_out = [json.loads(line) for line in pool.eval.read_text(encoding="utf-8").splitlines()]
    assert len(held_out) == TINY_POOL.eval_rows
    assert not {r["origin"] for r in held_out} & set(truth["origin"].values())
    assert not {r["prompt"] for r in held_out} & {r["prompt"] for r in rows.values()}
    again = build_sft_pool(pool.pool.parent / "again", shared_data, TINY_POOL)
    assert again.pool.read_bytes() == pool.pool.read_bytes()  # seeded


def test_removal_precision_counts_a_duplicate_pair_once(pool) -> None:
    truth = json.loads(pool.truth.read_text(encoding="utf-8"))
    everything = set(truth["kinds"])
    assert removal_precision(truth, everything)["removed"] == 0
    planted = {i for i, k in truth["kinds"].items() if k in PLANTED_KINDS}
    perfect = removal_precision(truth, everything - planted)
    assert perfect["precision"] == perfect["recall"] == 1.0
    originals = set(truth["duplicate_of"].values())
    swapped = removal_precision(truth, (everything - planted) | set(truth["duplicate_of"])
                                - originals)  # dedup kept the copies instead
    assert swapped["precision"] == 1.0
    assert swapped["expected_random_precision"] == pytest.approx(len(planted) / len(everything))


def test_break_even_arithmetic() -> None:
    # a 2x data efficiency halves training: 6·N·T·E/2 saved pays S = 6e15 FLOPs at N·E = 2e9
    result = break_even(6e15, 10**6, 2.0)
    assert result["params_epochs"] == pytest.approx(2e9)
    assert result["epochs"]["1B"] == pytest.approx(2.0)
    assert result["epochs"]["70B"] == pytest.approx(2e9 / 70e9)
    assert break_even(0.0, 10**6, 1.5)["params_epochs"] == 0.0
    assert break_even(6e15, 10**6, 0.9)["params_epochs"] is None
    assert break_even(6e15, 10**6, None)["params_epochs"] is None


def test_stage_fine_tunes_every_arm_from_one_base(stage: tuple[Path, dict]) -> None:
    root, summary = stage
    assert (root / "ft" / "base" / "model" / "config.json").is_file()
    table = summary["arms_table"]
    assert table["all"]["rows"] == TINY_POOL.rows
    assert table["selected"]["rows"] == table["random"]["rows"] < TINY_POOL.rows
    assert summary["selections"]["selected"]["flops"] == 0.0  # rules and MinHash: no model
    reports = {arm: json.loads((root / "ft" / "runs" / arm / "seed-0" / "report.json").read_text())
               for arm in ("all", "selected", "random")}
    assert len({r["flops_per_step"] * r["total_steps"] for r in reports.values()}) == 1
    assert {r["config"]["init_from"] for r in reports.values()} == {
        str(root / "ft" / "base" / "model")}
    # responses only: the all arm learns from fewer tokens than its blocks hold
    assert reports["all"]["data"]["train_blocks"] == TINY_POOL.rows
    planted = summary["planted"]
    assert planted["selected"]["precision"] > 2 * planted["random"]["expected_random_precision"]
    # the ceiling: exactly the planted rows gone (near copies, never their originals)
    counts = TINY_POOL.counts()
    assert table["oracle"]["rows"] == counts["clean"] + counts["long_good"]
    assert planted["oracle"]["precision"] == planted["oracle"]["recall"] == 1.0
    assert summary["break_even"]["selected"]["params_epochs"] in (0.0, None)
    assert summary["smollm2_scoring"]["flops"] > 0


def test_report_shows_the_fine_tuning_part(stage: tuple[Path, dict], tmp_path: Path) -> None:
    _, summary = stage
    report = SavingsReport(context=RunContext(command="pytest", seeds=[0]), finetuning=summary)
    text = write_savings_report(tmp_path, report).read_text()
    assert "## Fine-tuning: selected vs random vs all instruction data" in text
    assert "| selected |" in text and "| random |" in text and "| oracle |" in text
    assert "### Planted problems removed" in text and "| restated |" in text
    assert "### Break-even" in text and "epochs, 70B trainee" in text
    assert (tmp_path / "finetuning_loss_vs_flops.png").stat().st_size > 10_000
    assert headline_numbers(report)["sft_flops_ratio"] == summary["savings"]["ratio"]["mean"]
