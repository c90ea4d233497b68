"""The model stages import on a GPU box that has only torch, triton, transformers and numpy.

Why: a lent GPU machine has no datasets, pyarrow, xxhash, faiss or numba, and the GPU session
(``benchmarks/gpu_session.py``) runs generation and scoring there. The first GPU run found the
generation part dead on ``import datasets``; this keeps it importable.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BLOCKED = ("datasets", "pyarrow", "xxhash", "faiss", "gguf", "sentence_transformers", "numba",
           "prefect")

PROBE = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError("not on the GPU box: " + name)
sys.meta_path.insert(0, Block())
from datadiet.pipeline.stages.inference import Generator
from datadiet.pipeline.models.scoring import LMScorer
from datadiet.kernels.hf_checkpoint import load_llama
print("imported")
"""


def test_generator_and_scorer_import_without_the_data_stack() -> None:
    env_path = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "imported"
