"""Rotary position embedding (HF Llama ``rotate_half`` convention): PyTorch reference."""

from __future__ import annotations

import torch
from torch import Tensor


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
