"""Helpers shared by the Triton kernels: lazy compilation, interpreter detection, launch sizes.

Why kernels are compiled lazily
-------------------------------
``triton.jit`` decides *at decoration time* whether a function becomes a real GPU kernel or an
``InterpretedFunction`` (numpy simulation, ``TRITON_INTERPRET=1``). Decorating at import time
would freeze that choice at whatever the environment said when ``datadiet.kernels`` was first
imported, and would make ``import triton`` mandatory although Triton is an optional extra. So
the kernel modules define plain functions and wrap them in :class:`LazyKernel`, which imports
Triton and decorates on first launch, once per mode.

Kernels only use Triton *builtins* plus ``tl.sum``/``tl.max`` (which the interpreter maps to
numpy when Triton itself was imported with ``TRITON_INTERPRET=1``). Helpers such as
``tl.zeros``/``tl.sigmoid``/``tl.cdiv`` are ``@triton.jit`` functions inside Triton and stay
compiled-mode objects if Triton was imported before the variable was set, so they are avoided.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

_TRUE = {"1", "true", "yes", "on"}  # what Triton itself accepts


def triton_available() -> bool:
    """True when the optional ``triton`` package is installed (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the numpy interpreter (read at call time)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def interpreter_ready() -> bool:
    """Whether interpreted kernels can run in this process.

    The interpreter only handles ``tl.sum``/``tl.max`` when Triton's own standard library was
    decorated in interpreter mode, i.e. ``triton`` was first imported while
    ``TRITON_INTERPRET=1`` was set.
    """
    if not triton_available():
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.max, InterpretedFunction)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (Triton block shapes must be powers of two)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# A norm-kernel program holds whole rows in registers; past this width a row no longer fits in
# registers/shared memory comfortably and a looped kernel would be needed.
MAX_FUSED_ROW = 65536


def row_launch(n_cols: int) -> tuple[int, int]:
    """Block size and warp count for a kernel in which one program reduces one row.

    More warps for wider rows keeps per-thread register use bounded (a 4096-wide fp32 row over
    4 warps would be 32 values per thread, over 8 warps 16).
    """
    block = next_power_of_2(n_cols)
    if block > MAX_FUSED_ROW:
        raise ValueError(f"row width {n_cols} exceeds the fused kernel limit {MAX_FUSED_ROW}")
    if block >= 32768:
        warps = 32
    elif block >= 8192:
        warps = 16
    elif block >= 2048:
        warps = 8
    else:
        warps = 4
    return block, warps


def row_tile(n_cols: int, tile_elems: int = 4096) -> tuple[int, int, int]:
    """``(BLOCK, BLOCK_R, num_warps)`` for kernels whose programs own ``BLOCK_R`` whole rows.

    Narrow rows are packed several per program so each program still moves ~``tile_elems``
    values (a 576-wide row alone would leave most of a 1024-lane tile and its warps idle);
    rows of ``tile_elems`` or more get one row per program. ``BLOCK_R`` is capped at 32.
    """
    block, warps = row_launch(n_cols)
    block_r = max(1, min(32, tile_elems // block))
    if block_r > 1:
        warps = max(warps, 8 if block * block_r >= 4096 else 4)
    return block, block_r, warps


def num_programs_for_reduction(device: torch.device, n_rows: int) -> int:
    """Programs for kernels that reduce across rows (RMSNorm weight grad).

    One program per SM keeps the partial-sum buffer small (``[num_SMs, n_cols]``) while still
    filling the GPU; the interpreter runs programs sequentially so a handful is enough.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_rows, sms))
    return max(1, min(n_rows, 4))


class LazyKernel:
    """A kernel function that is ``triton.jit``-decorated on first launch, once per mode.

    Use like a jitted kernel: ``kernel[grid](*args, **meta)``.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._by_mode: dict[bool, Any] = {}

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        import triton

        interpret = _triton_interpret_mode(triton)
        kernel = self._by_mode.get(interpret)
        if kernel is None:
            import triton.language as tl

            if interpret and not interpreter_ready():
                raise RuntimeError(
                    "TRITON_INTERPRET=1 was set after `triton` was imported, so Triton's own "
                    "helpers (tl.sum/tl.max) cannot be interpreted; set it before importing "
                    "triton (e.g. at the top of conftest.py) or run in a fresh process"
                )
            # The kernel body refers to `tl`; bind it now that Triton is known to be importable.
            self.fn.__globals__["tl"] = tl
            kernel = triton.jit(self.fn)
            self._by_mode[interpret] = kernel
        return kernel[grid]


def _triton_interpret_mode(triton: Any) -> bool:
    """The mode ``triton.jit`` will pick right now (its own reading of the variable)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return interpreter_enabled()  # older Triton without `knobs` reads the variable directly


def lazy_jit(fn: Callable[..., Any]) -> LazyKernel:
    """Decorator form of :class:`LazyKernel`."""
    return LazyKernel(fn)


def cdiv(a: int, b: int) -> int:
    """Ceiling division for launch grids."""
    return -(-a // b)
