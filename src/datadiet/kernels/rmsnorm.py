"""RMSNorm and fused residual-add + RMSNorm: PyTorch reference (Triton kernels follow)."""

from __future__ import annotations

import torch
from torch import Tensor


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
