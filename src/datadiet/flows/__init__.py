"""Prefect flows over the datadiet library: thin wrappers, typed parameters, cached tasks.

``curate`` (spec -> curated dataset + manifest), ``build_prompts`` (demonstrations and
compression for an evaluation set -> prompts file + token report), ``train_and_measure`` (one
model, two datasets, one budget -> ledgers + comparison) and ``efficiency`` (the three chained).
``datadiet serve`` registers them as scheduled deployments (:mod:`datadiet.flows.serve`).
Importing this package is cheap; each flow module imports Prefect and its library when used.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Prefect's embedded (ephemeral) API server gets 20 s to start by default; its first start runs
# the database migrations, which on two busy cores takes longer. Set before Prefect is imported
# (its settings are read then); a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

_EXPORTS = {
    "curate": "datadiet.flows.curate",
    "CurateParams": "datadiet.flows.curate",
    "ScaleOut": "datadiet.flows.curate",
    "build_prompts": "datadiet.flows.prompts",
    "PromptParams": "datadiet.flows.prompts",
    "train_and_measure": "datadiet.flows.training",
    "TrainMeasureParams": "datadiet.flows.training",
    "TrainBudget": "datadiet.flows.training",
    "efficiency": "datadiet.flows.efficiency",
    "EfficiencyParams": "datadiet.flows.efficiency",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datadiet.flows' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
