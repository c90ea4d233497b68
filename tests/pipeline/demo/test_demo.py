"""`datadiet demo` on a small sample: every planted problem kind is caught."""

from __future__ import annotations

import json
from pathlib import Path

from datadiet.pipeline.demo.run import run_demo


def test_demo_catches_planted_problems(tmp_path: Path, capsys, shared_data: Path) -> None:
    assert run_demo(tmp_path, n_base=40) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["exact_copies_removed"][0] == summary["exact_copies_removed"][1] > 0
    hit, total = summary["near_copies_removed"]
    assert total > 0 and hit >= 0.9 * total
    assert summary["junk_removed"][0] == summary["junk_removed"][1] > 0
    assert (tmp_path / "curated" / "manifest.json").exists()
    assert summary["train_flops_ratio"] > 1.0  # curation pays for itself on one epoch
