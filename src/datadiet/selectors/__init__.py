"""Data-selection steps. Importing this package registers every built-in step."""

import importlib

from datadiet.selectors.base import STEP_REGISTRY, Step, StepContext, build_step, register_step

# Each module registers its step(s) on import; a module that is absent in a partial install
# simply leaves its step unregistered (build_step then lists what is available).
for _module in ("exact", "minhash", "semdedup", "quality", "perplexity", "dsir", "kcenter",
                "random_baseline"):
    try:
        importlib.import_module(f"datadiet.selectors.{_module}")
    except ModuleNotFoundError as _exc:  # only a missing module of ours is tolerated
        if _exc.name != f"datadiet.selectors.{_module}":
            raise

__all__ = ["STEP_REGISTRY", "Step", "StepContext", "build_step", "register_step"]
