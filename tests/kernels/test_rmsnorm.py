"""Triton RMSNorm / fused add+RMSNorm vs. the PyTorch reference (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from datadiet.kernels.rmsnorm import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)

# Odd sizes on purpose: 123 columns exercises the masked tail of a 128-wide block, and 615
# rows do not divide evenly among the programs of the weight-gradient reduction. bf16 uses a
# smaller batch because the interpreter emulates bf16 conversions bit by bit (slow).
CASES = [
    (torch.float32, (5, 123, 123)),
    (torch.float16, (5, 123, 123)),
    (torch.bfloat16, (3, 7, 123)),
]


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, n: int):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(n)]
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(device, dtype)
    return xs, weight


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=lambda v: str(v))
def test_rms_norm_forward_backward(kernel_device, close, dtype, shape) -> None:
    (x,), w = _inputs(shape, dtype, kernel_device, 1)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(kernel_device, dtype)

    xk, wk = _leaf(x), _leaf(w)
    yk = rms_norm_triton(xk, wk, eps=1e-6)
    yk.backward(dy)
    xr, wr = _leaf(x), _leaf(w)
    yr = rms_norm_reference(xr, wr, eps=1e-6)
    yr.backward(dy)

    assert yk.dtype == yr.dtype and yk.shape == yr.shape
    close(yk, yr, dtype)
    close(xk.grad, xr.grad, dtype)
    # The weight gradient sums over every row; compare relative to its magnitude.
    close(wk.grad, wr.grad, dtype, scale=4.0)


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=lambda v: str(v))
def test_add_rms_norm_forward_backward(kernel_device, close, dtype, shape) -> None:
    (x, r), w = _inputs(shape, dtype, kernel_device, 2)
    gen = torch.Generator().manual_seed(2)
    dy = torch.randn(shape, generator=gen).to(kernel_device, dtype)
    ds = torch.randn(shape, generator=gen).to(kernel_device, dtype)

    xk, rk, wk = _leaf(x), _leaf(r), _leaf(w)
    yk, sk = add_rms_norm_triton(xk, rk, wk)
    torch.autograd.backward([yk, sk], [dy, ds])
    xr, rr, wr = _leaf(x), _leaf(r), _leaf(w)
    yr, sr = add_rms_norm_reference(xr, rr, wr)
    torch.autograd.backward([yr, sr], [dy, ds])

    if dtype == torch.bfloat16 and kernel_device.type == "cpu":
        close(sk, sr, dtype)  # the interpreter truncates fp32 -> bf16 instead of rounding
    else:
        torch.testing.assert_close(sk, sr, atol=0, rtol=0)  # rounded exactly like eager `x + r`
    close(yk, yr, dtype)
    close(xk.grad, xr.grad, dtype)
    close(rk.grad, rr.grad, dtype)
    close(wk.grad, wr.grad, dtype, scale=4.0)


@pytest.mark.parametrize("use", ["normed_only", "residual_only"])
def test_add_rms_norm_one_output_used(kernel_device, close, use) -> None:
    """Gradients are right when autograd hands ``None`` for the unused output."""
    (x, r), w = _inputs((3, 5, 37), torch.float32, kernel_device, 2)
    results = []
    for fn in (add_rms_norm_triton, add_rms_norm_reference):
        xl, rl, wl = _leaf(x), _leaf(r), _leaf(w)
        y, s = fn(xl, rl, wl)
        out = y if use == "normed_only" else s
        (out * torch.arange(out.numel(), dtype=out.dtype, device=out.device).view_as(out).sin()).sum().backward()
        wgrad = wl.grad if wl.grad is not None else torch.zeros_like(wl)
        results.append((xl.grad, rl.grad, wgrad))
    for got, want in zip(*results, strict=True):
        close(got, want, torch.float32)


def test_rms_norm_noncontiguous_rows_and_2d(kernel_device, close) -> None:
    """Row-strided views (a slice of a wider tensor) and plain 2-D inputs."""
    base = torch.randn(9, 2 * 33, generator=torch.Generator().manual_seed(3)).to(kernel_device)
    x = base[:, :33]
    assert not x.is_contiguous()
    w = torch.rand(33, generator=torch.Generator().manual_seed(4)).to(kernel_device) + 0.5
    close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), torch.float32)


def test_rms_norm_weight_dtype_promotion(kernel_device, close) -> None:
    """fp16 activations with an fp32 weight promote to fp32, like the HF module."""
    x = torch.randn(4, 6, 40, generator=torch.Generator().manual_seed(5)).to(
        kernel_device, torch.float16
    )
    w = torch.rand(40, generator=torch.Generator().manual_seed(6)).to(kernel_device) + 0.5
    yk, yr = rms_norm_triton(x, w), rms_norm_reference(x, w)
    assert yk.dtype == yr.dtype == torch.float32
    close(yk, yr, torch.float16)


@pytest.mark.parametrize("n_rows", [1, 33])
def test_rms_norm_few_rows(kernel_device, close, n_rows) -> None:
    """Fewer rows than one tile (1) and a ragged tile/program split (33)."""
    (x, r), w = _inputs((n_rows, 37), torch.float32, kernel_device, 2)
    xk, rk, wk = _leaf(x), _leaf(r), _leaf(w)
    yk, sk = add_rms_norm_triton(xk, rk, wk)
    (yk.sum() + (sk * sk).sum()).backward()
    xr, rr, wr = _leaf(x), _leaf(r), _leaf(w)
    yr, sr = add_rms_norm_reference(xr, rr, wr)
    (yr.sum() + (sr * sr).sum()).backward()
    for got, want in [(yk, yr), (xk.grad, xr.grad), (rk.grad, rr.grad), (wk.grad, wr.grad)]:
        close(got, want, torch.float32)
