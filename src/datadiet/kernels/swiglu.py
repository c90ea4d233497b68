"""SwiGLU activation ``silu(gate) * up``: PyTorch reference."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    """``silu(gate) * up`` as in the Llama MLP."""
    return F.silu(gate) * up
