"""`datadiet demo` at a tiny size: the efficiency chain writes the saved-compute report."""

from __future__ import annotations

from pathlib import Path

from datadiet.flows.demo import demo_params
from datadiet.flows.efficiency import efficiency
from datadiet.pipeline.demo.mixture import MixtureSizes
from datadiet.pipeline.io import MANIFEST_FILE
from tests.flows.helpers import artifacts_of

TINY = MixtureSizes(wikitext=40, shakespeare=30, sherlock=20, gsm8k=40, t0=40, target=30,
                    eval_paragraphs=12)


def test_demo_writes_report_plots_and_artifacts(prefect_api: str, tmp_path: Path) -> None:
    params = demo_params(tmp_path / "demo-out", sizes=TINY, steps=6, prompts=2)
    state = efficiency(params, return_state=True)
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

    artifacts = artifacts_of(state.state_details.flow_run_id)
    published = artifacts["datadiet-efficiency-report"]["data"]
    assert "## Savings" in published and "data:image/png;base64," in published
    assert artifacts["datadiet-efficiency-progress"]["data"] == 100.0  # every stage done
