"""The prompting tests share one scorer: loading SmolLM2 once per session, not once per file."""

from __future__ import annotations

import pytest

from datadiet.pipeline.models.loading import ModelNotAvailableError
from datadiet.pipeline.models.scoring import LMScorer


@pytest.fixture(scope="session")
def scorer() -> LMScorer:
    try:
        return LMScorer(max_length=1024)
    except ModelNotAvailableError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(str(exc))
