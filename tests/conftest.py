"""Shared fixtures: the real-data kit, offline settings, isolated Prefect storage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and quiet, before anything imports transformers or Prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The compiled kernels on every input, however small: a fresh process would take the NumPy
# path below jit.KERNEL_MIN_ROWS texts, and the tests compare the kernels against it
# (DATADIET_NUMBA=0). Tests of the size rule itself unset this.
os.environ.setdefault("DATADIET_NUMBA", "1")

SHARED_DATA = Path(
    os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "lm").is_dir():
        pytest.fail(f"the real-data kit is missing at {SHARED_DATA} (set DATADIET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wiki_paragraphs(shared_data: Path) -> list[str]:
    from datadiet.experiments.corpus import wikitext_paragraphs

    return wikitext_paragraphs(shared_data / "lm" / "wikitext2_valid.txt")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Pin torch to one thread for a module: model-equality tests compare runs exactly, and
    the machine's two cores are shared with other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
