"""`datadiet demo` at a tiny size: the efficiency chain writes the saved-compute report."""

from __future__ import annotations

from pathlib import Path

from datadiet.experiments.mixture import MixtureSizes
from datadiet.experiments.sft_pool import PoolMix
from datadiet.flows import efficiency
from datadiet.flows.demo import demo_params
from datadiet.pipeline.io import MANIFEST_FILE
from tests.flows.helpers import artifacts_of

TINY = MixtureSizes(wikitext=40, shakespeare=30, sherlock=20, gsm8k=40, t0=40, target=30,
                    eval_paragraphs=12)


def test_demo_writes_report_plots_and_artifacts(prefect_api: str, tmp_path: Path) -> None:
    params = demo_params(tmp_path / "demo-out", sizes=TINY, steps=6, prompts=2, sft_steps=4,
                         pool=PoolMix(rows=60, eval_rows=8))
    state = efficiency(**params, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    out = tmp_path / "demo-out"
    assert result["report"] == str(out / "report.md")
    assert (out / "curated" / MANIFEST_FILE).exists()
    assert list((out / "curated").glob("*.parquet"))
    text = (out / "report.md").read_text()
    assert "## Savings" in text and "## Where curation did not help" in text
    assert "## Prompts: sst2_dev.jsonl with SmolLM2-135M-Instruct" in text
    assert "| zero-shot |" in text and "compressed to 0." in text
    assert (out / "prompts" / "prompts.jsonl").exists()
    assert (out / "prompts_tokens_accuracy.png").stat().st_size > 10_000
    assert "(curated/.datadiet/manifest.json)" in text and "training/baseline/report.json" in text
    assert (out / "pretraining_loss_vs_flops.png").stat().st_size > 10_000
    assert "## Fine-tuning: selected vs random vs all instruction data" in text
    assert "fine-tuning: not measured" not in text
    assert (out / "finetuning_loss_vs_flops.png").stat().st_size > 10_000
    assert result["finetune"]["arms_table"]["all"]["rows"] == 60
    assert (out / "finetuning" / "base" / "model" / "config.json").is_file()

    artifacts = artifacts_of(state.state_details.flow_run_id)
    published = artifacts["efficiency-corpus-jsonl-report"]["data"]
    assert "## Savings" in published and "data:image/png;base64," in published
    assert artifacts["efficiency-corpus-jsonl-progress"]["data"] == 100.0  # every stage done
