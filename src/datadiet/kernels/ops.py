"""Public kernel API with stable signatures; the backend is chosen per call.

Backends:

- ``triton``: the fused Triton kernels (``rmsnorm.py``, ``rope.py``, ``swiglu.py``,
  ``flce.py``). Used for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1`` (that
  is how the CPU test-suite exercises the real kernels, slowly, through Triton's interpreter).
- ``torch``: the plain PyTorch references. For fused linear cross-entropy this is the *chunked*
  PyTorch implementation, so the full ``[N, V]`` logits are never materialised on any backend.
- ``compile``: the references wrapped in ``torch.compile`` (compiled lazily on first use).

Selection: ``auto`` (default) picks ``triton`` where it can run and ``torch`` elsewhere. Force a
backend process-wide with the environment variable ``DATADIET_KERNELS=triton|torch|compile``
(read at every call) or locally with ``with use_backend("torch"): ...`` (context-local, so it
is safe across threads and asyncio tasks). Forcing ``triton`` where it cannot run raises
instead of silently falling back, so benchmarks and tests never measure the wrong thing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from datadiet.kernels._triton_utils import interpreter_enabled, triton_available
from datadiet.kernels.flce import (
    compiled_chunk_step,
    fused_linear_cross_entropy_chunked,
    fused_linear_cross_entropy_torch,
    fused_linear_cross_entropy_triton,
)
from datadiet.kernels.rmsnorm import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from datadiet.kernels.rope import apply_rope_reference, apply_rope_triton
from datadiet.kernels.swiglu import swiglu_reference, swiglu_triton

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "add_rms_norm",
    "apply_rope",
    "backend",
    "fused_linear_cross_entropy",
    "requested_backend",
    "rms_norm",
    "swiglu",
    "use_backend",
]

ENV_VAR = "DATADIET_KERNELS"
BACKENDS = ("auto", "triton", "torch", "compile")

_forced: ContextVar[str | None] = ContextVar("datadiet_kernels_backend", default=None)
_compiled: dict[str, Callable[..., Any]] = {}


def _validate(name: str) -> str:
    norm = name.strip().lower()
    if norm not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    return norm


def requested_backend() -> str:
    """The backend asked for: ``use_backend`` if active, else ``$DATADIET_KERNELS``, else auto."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return _validate(os.environ.get(ENV_VAR, "") or "auto")


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend (``auto``/``triton``/``torch``/``compile``) inside a ``with`` block."""
    token = _forced.set(_validate(name))
    try:
        yield
    finally:
        _forced.reset(token)


def _triton_runs_on(device: torch.device) -> bool:
    return triton_available() and (device.type == "cuda" or interpreter_enabled())


def backend(device: torch.device | str | None = None) -> str:
    """Concrete backend (``triton``/``torch``/``compile``) ops would use for tensors on ``device``.

    ``device`` defaults to CUDA when available, else CPU. Raises like the ops do when
    ``triton`` is forced but cannot run there.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _select(torch.device(device))


def _select(device: torch.device) -> str:
    requested = requested_backend()
    if requested in ("torch", "compile"):
        return requested
    runs = _triton_runs_on(device)
    if requested == "triton" and not runs:
        why = (
            "triton is not installed"
            if not triton_available()
            else (f"tensors are on {device.type} and TRITON_INTERPRET is not set")
        )
        raise RuntimeError(f"kernel backend 'triton' was forced but cannot run: {why}")
    return "triton" if runs else "torch"


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _select_for(t: Tensor) -> str:
    """Backend for an op on ``t``: dtypes the kernels do not handle (fp64 for gradcheck) fall
    back to the reference under ``auto``; a forced ``triton`` still raises for them."""
    chosen = _select(t.device)
    if chosen == "triton" and t.dtype not in _KERNEL_DTYPES:
        if requested_backend() == "triton":
            raise RuntimeError(f"kernel backend 'triton' was forced but {t.dtype} is unsupported")
        return "torch"
    return chosen


def _compiled_fn(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if name not in _compiled:
        _compiled[name] = torch.compile(fn)
    return _compiled[name]


# --------------------------------------------------------------------------- ops


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension (HF Llama numerics: fp32 statistics)."""
    chosen = _select_for(x)
    if chosen == "triton":
        return rms_norm_triton(x, weight, eps)
    if chosen == "compile":
        return _compiled_fn("rms_norm", rms_norm_reference)(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``new_residual = x + residual``; returns ``(rms_norm(new_residual), new_residual)``."""
    chosen = _select_for(x)
    if chosen == "triton" and x.shape == residual.shape:
        return add_rms_norm_triton(x, residual, weight, eps)
    if chosen == "compile":
        return _compiled_fn("add_rms_norm", add_rms_norm_reference)(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary embedding (HF ``rotate_half``) on q ``[B, H, T, D]`` and k ``[B, Hkv, T, D]``.

    ``cos``/``sin`` are ``[T, D]`` or ``[B, T, D]`` (a batch of 1 broadcasts).
    """
    chosen = _select_for(q)
    if chosen == "triton":
        return apply_rope_triton(q, k, cos, sin)
    if chosen == "compile":
        return _compiled_fn("apply_rope", apply_rope_reference)(q, k, cos, sin)
    return apply_rope_reference(q, k, cos, sin)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` (the Llama MLP activation)."""
    chosen = _select_for(gate)
    if chosen == "triton" and gate.shape == up.shape and gate.dim() > 0:
        return swiglu_triton(gate, up)
    if chosen == "compile":
        return _compiled_fn("swiglu", swiglu_reference)(gate, up)
    return swiglu_reference(gate, up)


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` without the full logits.

    ``hidden`` is ``[N, H]`` (leading dims are flattened), ``weight`` ``[V, H]``, ``targets``
    ``[N]`` int64. ``reduction`` is ``"mean"`` (over non-ignored tokens) or ``"sum"``. Gradients
    for ``hidden`` and ``weight`` are computed during the forward pass, chunk by chunk.
    """
    chosen = _select_for(hidden)
    if chosen == "triton":
        return fused_linear_cross_entropy_triton(
            hidden, weight, targets, ignore_index, reduction, chunk_size
        )
    if chosen == "compile":
        return fused_linear_cross_entropy_chunked(
            hidden, weight, targets, ignore_index, reduction, chunk_size, compiled_chunk_step()
        )
    return fused_linear_cross_entropy_torch(
        hidden, weight, targets, ignore_index, reduction, chunk_size
    )
