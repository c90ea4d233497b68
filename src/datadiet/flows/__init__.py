"""Prefect flows over the datadiet library: thin wrappers, typed parameters, cached tasks.

``curate`` (spec -> curated dataset + manifest), ``build_prompts`` (demonstrations and
compression for an evaluation set -> prompts file + token report), ``train_and_measure`` (one
model, two datasets, one budget -> ledgers + comparison) and ``efficiency`` (the three chained).
``datadiet serve`` registers them as scheduled deployments (:mod:`datadiet.flows.serve`).
Importing this package is cheap; each flow module imports Prefect and its library when used.
The flows' modules are named apart from the flows (``curation`` holds ``curate``, ``chain``
holds ``efficiency``), so ``from datadiet.flows import curate`` always gives the flow, whatever
was imported before.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Prefect's embedded (ephemeral) API server gets 20 s to start by default; its first start runs
# the database migrations, which on two busy cores takes longer. Set before Prefect is imported
# (its settings are read then); a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# A Prefect API that datadiet starts (the embedded one of a flow run from Python, of `datadiet
# serve` or of the demo without PREFECT_API_URL) sends no usage telemetry, and neither does the
# client: datadiet talks to no host its user did not name. A user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

_EXPORTS = {
    "curate": "datadiet.flows.curation",
    "CurateParams": "datadiet.flows.curation",
    "build_prompts": "datadiet.flows.prompts",
    "PromptParams": "datadiet.flows.prompts",
    "train_and_measure": "datadiet.flows.training",
    "TrainMeasureParams": "datadiet.flows.training",
    "TrainBudget": "datadiet.flows.training",
    "efficiency": "datadiet.flows.chain",
    "EfficiencyParams": "datadiet.flows.chain",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datadiet.flows' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
