"""RMSNorm and fused residual-add + RMSNorm: Triton kernels, autograd Functions, references.

Numerics follow Hugging Face ``LlamaRMSNorm``: statistics in fp32, the normalised row is
rounded to the input dtype *before* the weight multiply, output dtype is the promotion of the
input and weight dtypes. The kernels do the same rounding so fp16/bf16 results track the
reference closely, not merely within a loose tolerance.

Why fuse the residual add: in a pre-norm transformer every block does
``h = h + f(x); x = norm(h)``. Done eagerly that is three passes over ``h`` (read/read/write for
the add, then read/write for the norm); fused it is one read of each input and two writes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from datadiet.kernels._triton_utils import cdiv, lazy_jit, num_programs_for_reduction, row_tile

tl: Any = None  # bound to ``triton.language`` by LazyKernel on first launch


# --------------------------------------------------------------------------- references


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm as Hugging Face Llama computes it (fp32 statistics, cast back, then scale)."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (xf * rstd).to(x.dtype)


def add_rms_norm_reference(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Residual add followed by RMSNorm; returns ``(normed, x + residual)``."""
    new_residual = x + residual
    return rms_norm_reference(new_residual, weight, eps), new_residual


# --------------------------------------------------------------------------- kernels


@lazy_jit
def _rms_norm_fwd_kernel(
    X,
    R,
    W,
    Y,
    S,
    RSTD,
    stride_x,
    stride_r,
    stride_y,
    stride_s,
    n_rows,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    # A program owns BLOCK_R whole rows: each row sits in registers, so the sum of squares
    # and the normalisation need a single read of the input. Several rows per program keep
    # narrow rows (H=576) from leaving most lanes of a program idle.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    r64 = rows.to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    mask = row_mask[:, None] & (cols < n_cols)
    x = tl.load(X + r64 * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + r64 * stride_r + cols, mask=mask, other=0.0)
        # Round the sum to the storage dtype exactly like eager `x + residual`, and normalise
        # the rounded value: that is what the next block will see.
        s = (x.to(tl.float32) + r.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + r64 * stride_s + cols, s, mask=mask)
        xf = s.to(tl.float32)
    else:
        xf = x.to(tl.float32)
    mean_sq = tl.sum(xf * xf, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(mean_sq + eps)
    tl.store(RSTD + rows, rstd, mask=row_mask)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        xhat = (xf * rstd[:, None]).to(S.dtype.element_ty).to(tl.float32)
    else:
        xhat = (xf * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
    tl.store(Y + r64 * stride_y + cols, (xhat * w).to(Y.dtype.element_ty), mask=mask)


@lazy_jit
def _rms_norm_bwd_kernel(
    DY,
    DS,
    X,
    W,
    RSTD,
    DX,
    DR,
    DW_PARTIAL,
    stride_dy,
    stride_ds,
    stride_x,
    stride_dx,
    stride_dr,
    n_rows,
    n_cols,
    rows_per_program,
    HAS_DS: tl.constexpr,
    HAS_DR: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    # Each program walks a contiguous range of rows, BLOCK_R at a time, accumulating the
    # weight gradient in registers and writing it once ([n_programs, n_cols] partials, summed
    # by the host) instead of using atomics or an [n_rows, n_cols] temporary.
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    cols1 = tl.arange(0, BLOCK)
    cols = cols1[None, :]
    col_mask = cols < n_cols
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.full([BLOCK_R, BLOCK], 0.0, tl.float32)
    for r0 in range(row_start, row_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_mask = rows < row_end
        r64 = rows.to(tl.int64)[:, None]
        mask = row_mask[:, None] & col_mask
        dy = tl.load(DY + r64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + r64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)[:, None]
        xhat = x * rstd
        wdy = w * dy
        # d/dx of x*rstd(x): rstd * (g - xhat * mean(g * xhat)), with g = w * dy.
        c = (tl.sum(xhat * wdy, axis=1) / n_cols)[:, None]
        dx = (wdy - xhat * c) * rstd
        if HAS_DS:
            dx += tl.load(DS + r64 * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + r64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_DR:
            # x and residual get the same gradient; two stores beat a separate clone kernel
            # and avoid handing autograd one tensor for two inputs.
            tl.store(DR + r64 * stride_dr + cols, dx.to(DR.dtype.element_ty), mask=mask)
        # The forward multiplied w by xhat rounded to the input dtype; use the same value.
        # Masked rows have dy = 0 and add nothing.
        dw_acc += dy * xhat.to(X.dtype.element_ty).to(tl.float32)
    dw = tl.sum(dw_acc, axis=0)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols1, dw, mask=cols1 < n_cols)


# --------------------------------------------------------------------------- launchers


def backward_tile(n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK, BLOCK_R, num_warps)`` of the backward kernel: the forward's tile, twice the warps.

    The backward runs one program per SM (its weight-gradient partials stay small), so all the
    loads in flight on an SM come from one program: compiled for sm_90 with the forward's 8
    warps it took 117-154 registers a thread, one 256-thread program per SM; 16 warps halve
    the values each thread holds and double the warps that hide memory latency.
    """
    block, block_r, warps = row_tile(n_cols)
    return block, block_r, min(32, 2 * warps)


def _as_rows(t: Tensor) -> Tensor:
    """View as ``[rows, cols]`` with unit column stride (copying only when unavoidable)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _forward(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor | None, Tensor]:
    n_cols = x.shape[-1]
    if weight.shape != (n_cols,):
        raise ValueError(f"weight shape {tuple(weight.shape)} != ({n_cols},)")
    x2 = _as_rows(x)
    n_rows = x2.shape[0]
    if residual is not None:
        r2 = _as_rows(residual)
        s2 = torch.empty(
            x2.shape, dtype=torch.promote_types(x.dtype, residual.dtype), device=x.device
        )
        norm_in_dtype = s2.dtype
    else:
        r2 = s2 = x2  # unused placeholders (HAS_RESIDUAL is a compile-time False)
        norm_in_dtype = x.dtype
    y2 = torch.empty(
        x2.shape, dtype=torch.promote_types(norm_in_dtype, weight.dtype), device=x.device
    )
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block, block_r, warps = row_tile(n_cols)
    if n_rows > 0:
        _rms_norm_fwd_kernel[(cdiv(n_rows, block_r),)](
            x2,
            r2,
            weight.contiguous(),
            y2,
            s2,
            rstd,
            x2.stride(0),
            r2.stride(0),
            y2.stride(0),
            s2.stride(0),
            n_rows,
            n_cols,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK=block,
            BLOCK_R=block_r,
            num_warps=warps,
        )
    y = y2.view(x.shape)
    s = s2.view(x.shape) if residual is not None else None
    return y, s, rstd


def _backward(
    dy: Tensor,
    ds: Tensor | None,
    x: Tensor,
    weight: Tensor,
    rstd: Tensor,
    dx_dtype: torch.dtype,
    dr_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Gradients for the normalised input (and residual), and for the weight.

    ``x`` is the tensor that was normalised (the sum ``x + residual`` in the fused case).
    """
    n_cols = x.shape[-1]
    x2 = _as_rows(x)
    dy2 = _as_rows(dy)
    ds2 = _as_rows(ds) if ds is not None else dy2
    n_rows = x2.shape[0]
    dx2 = torch.empty(x2.shape, dtype=dx_dtype, device=x.device)
    dr2 = torch.empty(x2.shape, dtype=dr_dtype, device=x.device) if dr_dtype is not None else dx2
    block, block_r, warps = backward_tile(n_cols)
    # Whole tiles per program, then as many programs as that takes (<= the reduction target).
    n_prog = num_programs_for_reduction(x.device, n_rows)
    rows_per_program = cdiv(cdiv(max(n_rows, 1), n_prog), block_r) * block_r
    n_prog = max(1, cdiv(n_rows, rows_per_program))
    dw_partial = torch.empty((n_prog, n_cols), dtype=torch.float32, device=x.device)
    if n_rows > 0:
        _rms_norm_bwd_kernel[(n_prog,)](
            dy2,
            ds2,
            x2,
            weight.contiguous(),
            rstd,
            dx2,
            dr2,
            dw_partial,
            dy2.stride(0),
            ds2.stride(0),
            x2.stride(0),
            dx2.stride(0),
            dr2.stride(0),
            n_rows,
            n_cols,
            rows_per_program,
            HAS_DS=ds is not None,
            HAS_DR=dr_dtype is not None,
            BLOCK=block,
            BLOCK_R=block_r,
            num_warps=warps,
        )
    else:
        dw_partial.zero_()
    dw = dw_partial.sum(0).to(weight.dtype)
    dr = dr2.view(x.shape) if dr_dtype is not None else None
    return dx2.view(x.shape), dr, dw


# --------------------------------------------------------------------------- autograd


class RMSNormFunction(torch.autograd.Function):
    """Triton RMSNorm; saves the input and per-row ``1/rms`` (fp32) for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        y, _, rstd = _forward(x, None, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        dx, _, dw = _backward(dy, None, x, weight, rstd, x.dtype, None)
        return dx, dw, None


class AddRMSNormFunction(torch.autograd.Function):
    """Triton fused ``s = x + residual; y = rms_norm(s)``; returns ``(y, s)``.

    Saves ``s`` (an output, so no extra memory) and ``1/rms`` rather than both inputs.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        if x.shape != residual.shape:
            raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
        y, s, rstd = _forward(x, residual, weight, eps)
        assert s is not None
        ctx.save_for_backward(s, weight, rstd)
        ctx.dtypes = (x.dtype, residual.dtype)
        # Grad of `s` is None when the caller drops the new residual; skip adding zeros.
        ctx.set_materialize_grads(False)
        return y, s

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, ds: Tensor | None) -> tuple[Tensor | None, ...]:
        s, weight, rstd = ctx.saved_tensors
        x_dtype, r_dtype = ctx.dtypes
        if dy is None:  # only the residual stream was used downstream
            assert ds is not None
            # Copy one: autograd must not receive one tensor object for two inputs.
            return ds.to(x_dtype), ds.to(r_dtype, copy=True), None, None
        dx, dr, dw = _backward(dy, ds, s, weight, rstd, x_dtype, r_dtype)
        return dx, dr, dw, None


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd must record this call (else the launcher is called directly: decoding
    calls these ops thousands of times per second and ``Function.apply`` costs microseconds)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Triton RMSNorm over the last dimension (autograd-aware)."""
    if _needs_grad(x, weight):
        return RMSNormFunction.apply(x, weight, eps)
    return _forward(x, None, weight, eps)[0]


def add_rms_norm_triton(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Triton fused residual add + RMSNorm (autograd-aware); returns ``(normed, x + residual)``."""
    if _needs_grad(x, residual, weight):
        return AddRMSNormFunction.apply(x, residual, weight, eps)
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    y, s, _ = _forward(x, residual, weight, eps)
    assert s is not None
    return y, s
