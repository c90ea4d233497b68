"""`datadiet demo` measures on the real-data kit only: without it, a clear refusal (exit 2)
and nothing written; with it, the options shape the run (`--prompts`, `--sft-steps`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datadiet.experiments.corpus import DataKitMissing
from datadiet.experiments.mixture import MixtureSizes
from datadiet.flows.demo import demo_params

TINY = MixtureSizes(wikitext=20, shakespeare=10, sherlock=10, gsm8k=10, t0=10, target=10,
                    eval_paragraphs=5)


def _demo(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATADIET_SHARED_DATA"}
    return subprocess.run([sys.executable, "-m", "datadiet", "demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_demo_outside_the_repository_refuses(tmp_path: Path) -> None:
    run = _demo(["--out", "demo-out"], tmp_path)  # no ../shared/data above a temp folder
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("datadiet demo: error: the real-data kit was not found")
    assert "--data" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "demo-out").exists()  # nothing half-made


def test_demo_with_a_folder_that_is_not_the_kit_refuses(tmp_path: Path,
                                                         shared_data: Path) -> None:
    partial = tmp_path / "kit"
    (partial / "lm").mkdir(parents=True)  # looks like the kit at first sight
    run = _demo(["--out", "demo-out", "--data", str(partial)], tmp_path)
    assert run.returncode == 2 and str(partial) in run.stderr
    assert "sft/t0_train" in run.stderr
    assert not (tmp_path / "demo-out").exists()


def test_demo_params_honour_prompts_and_sft_steps(tmp_path: Path, shared_data: Path) -> None:
    params = demo_params(tmp_path / "a", sizes=TINY, steps=4, prompts=3, sft_steps=0,
                         data=shared_data)
    assert params["prompt_limit"] == 3 and params["sft_pool"] is None
    assert len(Path(params["eval_set"]).read_text().splitlines()) == 3
    params = demo_params(tmp_path / "b", sizes=TINY, steps=4, prompts=0, sft_steps=7,
                         data=shared_data)
    assert params["pool"] is None and params["eval_set"] is None
    assert params["sft_steps"] == 7 and Path(params["sft_pool"]).is_file()
    assert Path(params["sft_truth"]).is_file()
    with pytest.raises(DataKitMissing, match="real-data kit"):
        demo_params(tmp_path / "c", data=tmp_path / "nowhere")
