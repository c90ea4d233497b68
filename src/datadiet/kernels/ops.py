"""Public kernel API: stable signatures, backend chosen per call.

Placeholder dispatch: every op currently runs its PyTorch reference.
"""

from __future__ import annotations

from torch import Tensor

from datadiet.kernels.flce import fused_linear_cross_entropy_reference
from datadiet.kernels.rmsnorm import add_rms_norm_reference, rms_norm_reference
from datadiet.kernels.rope import apply_rope_reference
from datadiet.kernels.swiglu import swiglu_reference

__all__ = [
    "add_rms_norm",
    "apply_rope",
    "backend",
    "fused_linear_cross_entropy",
    "rms_norm",
    "swiglu",
    "use_backend",
]


def backend() -> str:
    """Name of the backend the ops would use."""
    return "torch"


class use_backend:  # noqa: N801 - used as a context manager, reads like a function
    """Force a backend inside a ``with`` block (placeholder)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension."""
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``new_residual = x + residual``; returns ``(rms_norm(new_residual), new_residual)``."""
    return add_rms_norm_reference(x, residual, weight, eps)


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary embedding on q ``[B, H, T, D]`` and k ``[B, Hkv, T, D]``; cos/sin ``[T, D]`` or ``[B, T, D]``."""
    return apply_rope_reference(q, k, cos, sin)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up``."""
    return swiglu_reference(gate, up)


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` (placeholder: materialises)."""
    del chunk_size
    return fused_linear_cross_entropy_reference(hidden, weight, targets, ignore_index, reduction)
