"""The full-vs-curated pre-training comparison and its report, at a tiny size on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datadiet.experiments.comparison import (
    PretrainSettings,
    pretraining_comparison,
    small_train_config,
)
from datadiet.experiments.mixture import MixtureSizes, build_mixture
from datadiet.experiments.report import SavingsReport, headline_numbers, write_savings_report
from datadiet.pipeline.io import MANIFEST_FILE, iter_jsonl
from datadiet.pipeline.report import RunContext
from datadiet.pipeline.stages.training import flops_to_reach

TINY = MixtureSizes(wikitext=40, shakespeare=30, sherlock=20, gsm8k=40, t0=40, target=30,
                    eval_paragraphs=12)


def test_mixture_keeps_eval_and_target_out_of_the_corpus(tmp_path: Path, shared_data: Path) -> None:
    mix = build_mixture(tmp_path, shared_data, TINY, seed=3)
    corpus = list(iter_jsonl(mix.corpus))
    texts = {r["text"] for r in corpus}
    assert not texts & {r["text"] for r in iter_jsonl(mix.target)}
    assert not texts & {r["text"] for r in iter_jsonl(mix.eval)}
    assert mix.documents == {"wikitext": 40, "shakespeare": 30, "sherlock": 20, "gsm8k": 40, "t0": 40}
    planted = {r["planted"].split(":")[0] for r in corpus}
    assert planted == {"original", "exact", "near", "junk"}
    assert len({r["id"] for r in corpus}) == len(corpus)
    copies = [r for r in corpus if r["planted"] in ("exact", "near")]
    by_id = {r["id"]: r for r in corpus}
    assert all(by_id[r["source_id"]]["source"] == r["source"] for r in copies)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain")
    settings = PretrainSettings(
        sizes=TINY, seeds=(0,),
        train=small_train_config(quick=True, max_steps=12, eval_every=3, max_eval_blocks=8,
                                 seq_len=64, batch_size=8, warmup_steps=2),
    )
    return out, pretraining_comparison(out, shared_data, settings)


def test_curation_moves_the_data_towards_the_target(comparison: tuple[Path, dict]) -> None:
    _, summary = comparison
    raw, kept = summary["curation"]["input"]["characters"], summary["curation"]["kept"]["characters"]
    share = lambda chars: chars.get("wikitext", 0) / sum(chars.values())  # noqa: E731
    assert share(kept) > 2 * share(raw)
    assert summary["curation"]["rows_out"] < summary["curation"]["rows_in"]
    assert summary["curation"]["perplexity_step_flops"] > summary["savings"]["budget_flops"]
    planted = {row["planted"]: row for row in summary["curation"]["planted"]}
    assert planted["exact copies"]["removed"] == planted["exact copies"]["count"] > 0
    assert planted["near copies"]["removed"] >= 0.8 * planted["near copies"]["count"] > 0
    assert planted["junk"]["removed"] == planted["junk"]["count"] > 0


def test_both_arms_get_the_same_budget_and_the_ratio_follows_the_curves(
        comparison: tuple[Path, dict]) -> None:
    out, summary = comparison
    full, curated = summary["runs"]["full"][0], summary["runs"]["curated"][0]
    assert full["config"]["tokenizer"] == curated["config"]["tokenizer"] == str(out / "tokenizer")
    assert full["flops_per_step"] == curated["flops_per_step"]
    assert full["total_steps"] == curated["total_steps"] == 12
    pair = summary["savings"]["per_seed"][0]
    report = json.loads((Path(full["run_dir"]) / "report.json").read_text())
    assert pair["baseline_flops"] == flops_to_reach(report, full["final_eval_loss"])
    if pair["candidate_flops"] is not None:
        assert pair["ratio"] == pytest.approx(pair["baseline_flops"] / pair["candidate_flops"])
    assert (out / "curated" / MANIFEST_FILE).exists()


def test_report_has_the_table_plot_links_and_notes(comparison: tuple[Path, dict],
                                                   tmp_path: Path) -> None:
    out, summary = comparison
    report = SavingsReport(context=RunContext(command="pytest", seeds=[0], data="tiny mixture"),
                           pretraining=summary, missing={"prompts": "not run in this test"})
    path = write_savings_report(out, report)
    text = path.read_text()
    assert "## Savings" in text and "## Where curation did not help" in text
    assert "prompts: not measured — not run in this test" in text
    assert "(curated/.datadiet/manifest.json)" in text and "runs/full/seed-0/report.json" in text
    png = out / "pretraining_loss_vs_flops.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "pretraining_loss_vs_flops.png" in text and "command: pytest" in text
    assert "| junk |" in text  # the planted-problems table
    numbers = headline_numbers(report)
    assert numbers["train_flops_ratio"] == summary["savings"]["ratio"]["mean"]
    assert numbers["prompt_token_ratio"] is None
    assert numbers["targets_met"]["train_flops_ratio"] == (
        None if numbers["train_flops_ratio"] is None else numbers["train_flops_ratio"] >= 2.0)
