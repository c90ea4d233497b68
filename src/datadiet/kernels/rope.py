"""Rotary position embedding (HF Llama ``rotate_half`` convention): Triton kernel + reference.

``rotate_half(x) = cat(-x[..., h:], x[..., :h])`` with ``h = D // 2``; the embedding is
``x * cos + rotate_half(x) * sin``. The kernel writes this as a gather, ``out[j] = x[j] cos[j]
+ sign[j] x[src[j]] sin[j]``, which is exact for any ``D`` (odd included, where the halves
differ in length) and does not assume the usual duplicated-halves layout of ``cos``/``sin``.

The backward pass is the transpose of that linear map: ``dx = dy * cos + R^T (dy * sin)``
with ``(R^T v)[i] = -v[i - h]`` for ``i >= h`` and ``v[i + D - h]`` otherwise, so the same
kernel serves both directions (``BACKWARD`` switches the gather). ``cos``/``sin`` are treated
as constants (they are buffers in every Llama implementation) and get no gradient.

One program handles one ``(batch, position)`` pair for all q and k heads, so the ``cos``/``sin``
row is loaded once and reused across heads; q and k are updated in one launch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from datadiet.kernels._triton_utils import lazy_jit, next_power_of_2

tl: Any = None  # bound to ``triton.language`` by LazyKernel on first launch


# --------------------------------------------------------------------------- reference


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _broadcast_cos_sin(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    # [T, D] -> [1, 1, T, D]; [B, T, D] -> [B, 1, T, D] so they broadcast over heads.
    if cos.dim() == 2:
        return cos[None, None], sin[None, None]
    return cos[:, None], sin[:, None]


def apply_rope_reference(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """``x * cos + rotate_half(x) * sin`` for q ``[B, H, T, D]`` and k ``[B, Hkv, T, D]``."""
    c, s = _broadcast_cos_sin(cos, sin)
    c = c.to(q.dtype)
    s = s.to(q.dtype)
    return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s


# --------------------------------------------------------------------------- kernel


@lazy_jit
def _rope_kernel(
    Q,
    K,
    COS,
    SIN,
    QO,
    KO,
    q_sb,
    q_sh,
    q_st,
    k_sb,
    k_sh,
    k_st,
    qo_sb,
    qo_sh,
    qo_st,
    ko_sb,
    ko_sh,
    ko_st,
    c_sb,
    c_st,
    n_t,
    n_qh,
    n_kh,
    head_dim,
    half,
    BACKWARD: tl.constexpr,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_t
    t = pid % n_t
    d = tl.arange(0, BLOCK_D)
    d_mask = d < head_dim
    if BACKWARD:
        # Transpose of rotate_half: gather from the other half with the opposite sign, and
        # take sin at the *source* position (the forward multiplied by sin at the output).
        src = tl.where(d >= half, d - half, d + head_dim - half)
        sign = tl.where(d >= half, -1.0, 1.0)
        sin_idx = src
    else:
        src = tl.where(d < head_dim - half, d + half, d - (head_dim - half))
        sign = tl.where(d < head_dim - half, -1.0, 1.0)
        sin_idx = d
    cs_base = b * c_sb + t * c_st
    # Round cos/sin to the activation dtype first, as the reference (and HF) do.
    cos = tl.load(COS + cs_base + d, mask=d_mask, other=0.0).to(QO.dtype.element_ty)
    sin = tl.load(SIN + cs_base + sin_idx, mask=d_mask, other=0.0).to(QO.dtype.element_ty)
    cos = cos.to(tl.float32)[None, :]
    ssin = (sin.to(tl.float32) * sign)[None, :]
    d2 = d[None, :]
    src2 = src[None, :]

    qh = tl.arange(0, BLOCK_QH)[:, None]
    q_mask = (qh < n_qh) & d_mask[None, :]
    q_row = Q + b * q_sb + t * q_st + qh * q_sh
    x = tl.load(q_row + d2, mask=q_mask, other=0.0).to(tl.float32)
    xr = tl.load(q_row + src2, mask=q_mask, other=0.0).to(tl.float32)
    out = x * cos + xr * ssin
    tl.store(QO + b * qo_sb + t * qo_st + qh * qo_sh + d2, out.to(QO.dtype.element_ty), mask=q_mask)

    kh = tl.arange(0, BLOCK_KH)[:, None]
    k_mask = (kh < n_kh) & d_mask[None, :]
    k_row = K + b * k_sb + t * k_st + kh * k_sh
    x = tl.load(k_row + d2, mask=k_mask, other=0.0).to(tl.float32)
    xr = tl.load(k_row + src2, mask=k_mask, other=0.0).to(tl.float32)
    out = x * cos + xr * ssin
    tl.store(KO + b * ko_sb + t * ko_st + kh * ko_sh + d2, out.to(KO.dtype.element_ty), mask=k_mask)


# --------------------------------------------------------------------------- launcher


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _cos_sin_strides(cos: Tensor, batch: int, n_t: int, head_dim: int) -> tuple[int, int]:
    if cos.dim() == 2:
        if cos.shape != (n_t, head_dim):
            raise ValueError(f"cos/sin shape {tuple(cos.shape)} != ({n_t}, {head_dim})")
        return 0, cos.stride(0)
    if cos.dim() != 3 or cos.shape[1:] != (n_t, head_dim) or cos.shape[0] not in (1, batch):
        raise ValueError(f"cos/sin shape {tuple(cos.shape)} incompatible with B={batch}, T={n_t}")
    # A batch dimension of 1 broadcasts (HF passes position_ids of shape [1, T]).
    return (0 if cos.shape[0] == 1 else cos.stride(0)), cos.stride(1)


def launch_params(n_qh: int, n_kh: int, head_dim: int) -> tuple[int, int, int, int]:
    """``(BLOCK_QH, BLOCK_KH, BLOCK_D, num_warps)``: one program holds every head of a position.

    About 512 q elements per warp: compiled for sm_90, 32 heads x 128 over 4 warps took 146
    registers a thread (few programs resident per SM for a memory-bound kernel), over 8 about
    half that.
    """
    block_qh, block_d = next_power_of_2(n_qh), next_power_of_2(head_dim)
    warps = max(4, min(16, block_qh * block_d // 512))
    return block_qh, next_power_of_2(n_kh), block_d, warps


def _launch(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backward: bool
) -> tuple[Tensor, Tensor]:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("q and k must be [B, H, T, D]")
    batch, n_qh, n_t, head_dim = q.shape
    if k.shape[0] != batch or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, T or D")
    if cos.shape != sin.shape:
        raise ValueError("cos and sin must have the same shape")
    n_kh = k.shape[1]
    q, k = _unit_last(q), _unit_last(k)
    cos, sin = _unit_last(cos), _unit_last(sin)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    c_sb, c_st = _cos_sin_strides(cos, batch, n_t, head_dim)
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    block_qh, block_kh, block_d, warps = launch_params(n_qh, n_kh, head_dim)
    if q.numel() and k.numel():
        _rope_kernel[(batch * n_t,)](
            q,
            k,
            cos,
            sin,
            qo,
            ko,
            q.stride(0),
            q.stride(1),
            q.stride(2),
            k.stride(0),
            k.stride(1),
            k.stride(2),
            qo.stride(0),
            qo.stride(1),
            qo.stride(2),
            ko.stride(0),
            ko.stride(1),
            ko.stride(2),
            c_sb,
            c_st,
            n_t,
            n_qh,
            n_kh,
            head_dim,
            head_dim // 2,
            BACKWARD=backward,
            BLOCK_QH=block_qh,
            BLOCK_KH=block_kh,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return qo, ko


class RoPEFunction(torch.autograd.Function):
    """Triton RoPE for q and k together; saves only ``cos``/``sin`` (shared buffers)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        if q.dtype != k.dtype:
            raise ValueError(f"q ({q.dtype}) and k ({k.dtype}) must share a dtype")
        ctx.save_for_backward(cos, sin)
        return _launch(q, k, cos, sin, backward=False)

    @staticmethod
    def backward(ctx: Any, dq: Tensor, dk: Tensor) -> tuple[Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        dq_in, dk_in = _launch(dq, dk, cos, sin, backward=True)
        return dq_in, dk_in, None, None


def apply_rope_triton(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Triton RoPE (autograd-aware) with the same contract as :func:`apply_rope_reference`."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return RoPEFunction.apply(q, k, cos, sin)
    if q.dtype != k.dtype:
        raise ValueError(f"q ({q.dtype}) and k ({k.dtype}) must share a dtype")
    return _launch(q, k, cos, sin, backward=False)  # no graph: skip Function.apply's overhead
