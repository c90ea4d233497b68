"""The core install: `pip install datadiet` without extras curates a corpus.

`make test` runs this file (with the other curation tests) in a venv that has only the core
dependencies, with DATADIET_CORE_INSTALL=1, so a heavy import sneaking onto the curation path
(torch, transformers, numba, Prefect) fails CI instead of a user's lean install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datadiet.pipeline.io import MANIFEST_FILE

HEAVY = ("torch", "transformers", "sentence_transformers", "numba", "prefect", "faiss")
CORE_ONLY = os.environ.get("DATADIET_CORE_INSTALL") == "1"


@pytest.mark.skipif(not CORE_ONLY, reason="checks the core venv of `make test-core`")
def test_the_core_install_has_no_heavy_package() -> None:
    present = [name for name in HEAVY if importlib.util.find_spec(name) is not None]
    assert present == [], f"the core install pulled in {present}"


def test_curate_runs_on_the_core_dependencies(tmp_path: Path, shared_data: Path) -> None:
    """A real corpus through the CLI, with the heavy packages made unimportable."""
    corpus = tmp_path / "corpus.jsonl"
    lines = (shared_data / "lm" / "tinyshakespeare.txt").read_text().split("\n\n")[:400]
    with corpus.open("w") as out:
        for i, block in enumerate(lines + lines[:50]):  # 50 exact repeats to remove
            out.write(json.dumps({"id": f"s{i}", "text": block}) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n- minhash_dedup: {threshold: 0.8}\n"
                    "- quality: {min_words: 5}\n")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        # None in sys.modules: `import torch` fails and find_spec says "not installed"
        f"import sys\nsys.modules.update(dict.fromkeys({HEAVY!r}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "datadiet", "curate", str(corpus), "--spec", str(spec),
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    exact = next(s for s in manifest["steps"] if s["name"] == "exact_dedup")
    assert exact["rows_in"] == 450 and exact["rows_in"] - exact["rows_out"] >= 50
    kept = sum(pq.read_metadata(f).num_rows for f in out.glob("data-*.parquet"))
    assert kept == manifest["steps"][-1]["rows_out"] > 0
