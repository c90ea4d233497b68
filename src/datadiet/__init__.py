"""datadiet: spend fewer tokens on LLM work, and prove it.

The public API is re-exported here lazily (PEP 562), so ``import datadiet`` stays cheap and does
not import torch, transformers or Prefect until a feature that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "curate": "datadiet.pipeline.curate",
    "curate_path": "datadiet.pipeline.curate",
    "CurateResult": "datadiet.pipeline.curate",
    "Manifest": "datadiet.pipeline.manifest",
    "load_corpus": "datadiet.pipeline.io",
    "DataError": "datadiet.pipeline.io",
    "Selection": "datadiet.pipeline.selection",
    "Ledger": "datadiet.pipeline.ledger",
    "ModelShape": "datadiet.pipeline.ledger",
    "LMScorer": "datadiet.pipeline.models.scoring",
    "Embedder": "datadiet.pipeline.models.embedding",
    "load_causal_lm": "datadiet.pipeline.models.loading",
    "Step": "datadiet.pipeline.steps",
    "StepContext": "datadiet.pipeline.steps",
    "build_step": "datadiet.pipeline.steps",
    "ExactDedup": "datadiet.selectors.exact",
    "MinHashDedup": "datadiet.selectors.minhash",
    "SemanticDedup": "datadiet.selectors.semdedup",
    "QualityFilter": "datadiet.selectors.quality",
    "PerplexityFilter": "datadiet.selectors.perplexity",
    "DSIR": "datadiet.selectors.dsir",
    "KCenterCoreset": "datadiet.selectors.kcenter",
    "RandomSelect": "datadiet.selectors.random_baseline",
    "compress": "datadiet.prompting.compression",
    "compress_batch": "datadiet.prompting.compression",
    "compress_prompt": "datadiet.prompting.compression",
    "Compression": "datadiet.prompting.compression",
    "Compressor": "datadiet.prompting.compression",
    "PromptCompressor": "datadiet.prompting.compression",
    "BudgetError": "datadiet.prompting.compression",
    "DemoSelector": "datadiet.prompting.demos",
    "DemoOrderer": "datadiet.prompting.demos",
    "PromptTemplate": "datadiet.prompting.demos",
    "build_prompt": "datadiet.prompting.demos",
    "ICLEvaluator": "datadiet.prompting.icl",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datadiet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
