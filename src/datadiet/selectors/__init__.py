"""Data-selection steps. Importing this package registers every built-in step."""

from datadiet.selectors.base import STEP_REGISTRY, Step, StepContext, build_step, register_step

__all__ = ["STEP_REGISTRY", "Step", "StepContext", "build_step", "register_step"]
