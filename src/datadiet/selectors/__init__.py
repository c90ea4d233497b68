"""Data-selection steps. Importing this package registers every built-in step."""

from datadiet.pipeline.steps import STEP_REGISTRY, Step, StepContext, build_step, register_step
from datadiet.selectors import (  # noqa: F401 - imported to register their steps
    cluster_sample,
    decontaminate,
    deita,
    dsir,
    exact,
    ifd,
    judge,
    kcenter,
    longest,
    minhash,
    perplexity,
    quality,
    random_baseline,
    relevance,
    response_rules,
    semdedup,
)

__all__ = ["STEP_REGISTRY", "Step", "StepContext", "build_step", "register_step"]
