"""Fused linear + cross-entropy that never materialises the full ``[N, V]`` logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def fused_linear_cross_entropy_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Materialising reference: ``F.cross_entropy(hidden @ W.T, targets)`` in fp32."""
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
