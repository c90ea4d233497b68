"""Data-selection steps. Importing this package registers every built-in step."""

from datadiet.selectors import (  # noqa: F401 - imported to register their steps
    dsir,
    exact,
    kcenter,
    minhash,
    perplexity,
    quality,
    random_baseline,
    semdedup,
)
from datadiet.selectors.base import STEP_REGISTRY, Step, StepContext, build_step, register_step

__all__ = ["STEP_REGISTRY", "Step", "StepContext", "build_step", "register_step"]
