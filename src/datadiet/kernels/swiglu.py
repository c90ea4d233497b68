"""SwiGLU activation ``silu(gate) * up``: Triton kernels, autograd Function, reference.

Eager PyTorch materialises ``silu(gate)`` (one extra activation-sized tensor) and autograd
keeps it for the backward of the product. The fused forward reads ``gate`` and ``up`` once and
writes only the output; the backward recomputes the sigmoid from the saved inputs instead of
storing intermediates, trading a few FLOPs for memory in a memory-bound op.

The kernels work on ``[rows, cols]`` views with a row stride, so ``gate, up =
fused.chunk(2, -1)`` (halves of a fused gate/up projection) needs no copy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datadiet.kernels._triton_utils import cdiv, lazy_jit, next_power_of_2

tl: Any = None  # bound to ``triton.language`` by LazyKernel on first launch


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` as in the Llama MLP."""
    return F.silu(gate) * up


@lazy_jit
def _swiglu_fwd_kernel(G, U, Y, stride_g, stride_u, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    # sigmoid written out: tl.sigmoid is a jitted helper the interpreter may not resolve.
    sig = 1.0 / (1.0 + tl.exp(-g))
    # Round silu(gate) to the storage dtype like the eager two-op version does.
    silu = (g * sig).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (silu * u).to(Y.dtype.element_ty), mask=mask)


@lazy_jit
def _swiglu_bwd_kernel(
    DY,
    G,
    U,
    DG,
    DU,
    stride_dy,
    stride_g,
    stride_u,
    stride_dg,
    stride_du,
    n_cols,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    silu = g * sig
    # d silu / dg = sig * (1 + g * (1 - sig))
    dg = dy * u * sig * (1.0 + g * (1.0 - sig))
    du = dy * silu
    tl.store(DG + row * stride_dg + cols, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, du.to(DU.dtype.element_ty), mask=mask)


def _rows(t: Tensor) -> Tensor:
    t2 = t.reshape(-1, t.shape[-1]) if t.dim() != 1 else t.reshape(1, -1)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _block(n_cols: int) -> int:
    # 1024 elements per program is a good memory-bound tile; narrower rows get a tighter block
    # so masked-off lanes do not dominate.
    return min(1024, next_power_of_2(n_cols))


def _forward(gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, gate_rows, up_rows)``: the output and the ``[rows, cols]`` views backward needs."""
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    g2, u2 = _rows(gate), _rows(up)
    n_rows, n_cols = g2.shape
    out_dtype = torch.promote_types(gate.dtype, up.dtype)
    y2 = torch.empty((n_rows, n_cols), dtype=out_dtype, device=gate.device)
    block = _block(n_cols)
    if y2.numel():
        _swiglu_fwd_kernel[(n_rows, cdiv(n_cols, block))](
            g2, u2, y2, g2.stride(0), u2.stride(0), y2.stride(0), n_cols, BLOCK=block
        )
    return y2.view(gate.shape), g2, u2


class SwiGLUFunction(torch.autograd.Function):
    """Triton ``silu(gate) * up``; saves the two inputs and recomputes the rest."""

    @staticmethod
    def forward(ctx: Any, gate: Tensor, up: Tensor) -> Tensor:
        y, g2, u2 = _forward(gate, up)
        ctx.save_for_backward(g2, u2)
        ctx.shape = gate.shape
        ctx.dtypes = (gate.dtype, up.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor]:
        g2, u2 = ctx.saved_tensors
        dy2 = _rows(dy)
        n_rows, n_cols = g2.shape
        dg = torch.empty((n_rows, n_cols), dtype=ctx.dtypes[0], device=g2.device)
        du = torch.empty((n_rows, n_cols), dtype=ctx.dtypes[1], device=g2.device)
        block = _block(n_cols)
        if dg.numel():
            _swiglu_bwd_kernel[(n_rows, cdiv(n_cols, block))](
                dy2,
                g2,
                u2,
                dg,
                du,
                dy2.stride(0),
                g2.stride(0),
                u2.stride(0),
                dg.stride(0),
                du.stride(0),
                n_cols,
                BLOCK=block,
            )
        return dg.view(ctx.shape), du.view(ctx.shape)


def swiglu_triton(gate: Tensor, up: Tensor) -> Tensor:
    """Triton SwiGLU (autograd-aware) with the same contract as :func:`swiglu_reference`."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SwiGLUFunction.apply(gate, up)
    return _forward(gate, up)[0]  # no graph to record: skip Function.apply's overhead
