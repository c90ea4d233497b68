"""Triton SwiGLU vs. ``F.silu(gate) * up`` (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from datadiet.kernels.swiglu import swiglu_reference, swiglu_triton


def _run(fn, gate, up, dy):
    g, u = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    y = fn(g, u)
    y.backward(dy)
    return y, g.grad, u.grad


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (torch.float32, (5, 123, 123)),
        (torch.float16, (5, 123, 123)),
        (torch.bfloat16, (3, 7, 123)),
    ],
    ids=lambda v: str(v),
)
def test_swiglu_forward_backward(kernel_device, close, dtype, shape) -> None:
    gen = torch.Generator().manual_seed(0)
    gate, up, dy = (torch.randn(shape, generator=gen).to(kernel_device, dtype) for _ in range(3))
    got = _run(swiglu_triton, gate, up, dy)
    want = _run(swiglu_reference, gate, up, dy)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        close(g, w, dtype)


def test_swiglu_on_chunked_fused_projection(kernel_device, close) -> None:
    """``gate, up = proj.chunk(2, -1)`` gives row-strided views; no copy, same result."""
    gen = torch.Generator().manual_seed(1)
    fused = torch.randn(2, 9, 2 * 1100, generator=gen).to(kernel_device)  # > one 1024 block
    gate, up = fused.chunk(2, dim=-1)
    assert not gate.is_contiguous()
    dy = torch.randn(gate.shape, generator=gen).to(kernel_device)
    for g, w in zip(
        _run(swiglu_triton, gate, up, dy), _run(swiglu_reference, gate, up, dy), strict=True
    ):
        close(g, w, torch.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy, by design
def test_swiglu_large_magnitudes_stay_finite(kernel_device, close) -> None:
    """exp(-g) overflows to inf for very negative g; the sigmoid must still be 0, not NaN."""
    gate = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]]).to(kernel_device)
    up = torch.ones_like(gate)
    dy = torch.ones_like(gate)
    got = _run(swiglu_triton, gate, up, dy)
    want = _run(swiglu_reference, gate, up, dy)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        close(g, w, torch.float32)
