"""Fused linear cross-entropy (Triton per-row kernel and the chunked PyTorch step) vs.
``F.cross_entropy(hidden @ W.T, targets)``: loss and gradients for hidden and weight."""

from __future__ import annotations

import pytest
import torch

from datadiet.kernels import flce
from datadiet.kernels.flce import (
    default_chunk_size,
    fused_linear_cross_entropy_reference,
    fused_linear_cross_entropy_torch,
    fused_linear_cross_entropy_triton,
)

N, H, V = 37, 33, 301  # odd everything; chunks of 8 leave a ragged last chunk of 5
IMPLS = {
    "triton": fused_linear_cross_entropy_triton,
    "torch_chunked": fused_linear_cross_entropy_torch,
}
# Loss/grad tolerances vs. an fp32 reference computed on the same (rounded) inputs. fp32: sum
# order only. fp16/bf16: logits and dlogits are stored in the input dtype between the matmuls.
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2)}


def _problem(dtype: torch.dtype, device: torch.device, ignore_every: int = 4):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, generator=gen).to(device, dtype)
    weight = (0.3 * torch.randn(V, H, generator=gen)).to(device, dtype)
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[::ignore_every] = -100
    return hidden, weight, targets.to(device)


def _loss_and_grads(fn, hidden, weight, targets, grad_out=1.0, **kw):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    loss.backward(torch.tensor(grad_out, device=loss.device, dtype=loss.dtype))
    return loss.detach(), h.grad, w.grad


def _reference(hidden, weight, targets, grad_out=1.0, reduction="mean", ignore_index=-100):
    def fn(h, w, t):
        return fused_linear_cross_entropy_reference(h, w, t, ignore_index, reduction)

    return _loss_and_grads(fn, hidden.float(), weight.float(), targets, grad_out)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_flce_matches_reference(kernel_device, impl, dtype, reduction) -> None:
    hidden, weight, targets = _problem(dtype, kernel_device)
    got = _loss_and_grads(
        IMPLS[impl], hidden, weight, targets, 1.7, reduction=reduction, chunk_size=8
    )
    want = _reference(hidden, weight, targets, 1.7, reduction)
    atol, rtol = TOL[dtype]
    scale = 1.0 if reduction == "mean" else 4.0  # sums over ~28 tokens
    assert got[1].dtype == dtype and got[2].dtype == dtype
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w, atol=atol * scale, rtol=rtol * scale)


def test_flce_default_chunking_and_custom_ignore_index(kernel_device) -> None:
    hidden, weight, targets = _problem(torch.float32, kernel_device)
    targets = torch.where(targets == -100, torch.full_like(targets, 7), targets)
    targets[1::5] = 7  # ignore_index inside the vocabulary range
    got = _loss_and_grads(
        fused_linear_cross_entropy_triton, hidden, weight, targets, ignore_index=7
    )
    want = _reference(hidden, weight, targets, ignore_index=7)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


def test_flce_accepts_batched_hidden(kernel_device) -> None:
    hidden, weight, targets = _problem(torch.float32, kernel_device)
    h3, t2 = hidden[:36].reshape(4, 9, H), targets[:36].reshape(4, 9)
    got = fused_linear_cross_entropy_triton(h3, weight, t2, chunk_size=16)
    want = fused_linear_cross_entropy_reference(hidden[:36], weight, targets[:36])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_flce_all_ignored_is_nan_with_zero_grads(kernel_device) -> None:
    """Mirrors F.cross_entropy: mean over zero tokens is NaN; nothing to learn, zero grads."""
    hidden, weight, _ = _problem(torch.float32, kernel_device)
    targets = torch.full((N,), -100, device=kernel_device)
    loss, gh, gw = _loss_and_grads(fused_linear_cross_entropy_triton, hidden, weight, targets)
    ref = fused_linear_cross_entropy_reference(hidden, weight, targets)
    assert torch.isnan(loss) and torch.isnan(ref)
    assert not gh.any() and not gw.any()


def test_flce_no_grad_and_single_input_grad(kernel_device) -> None:
    hidden, weight, targets = _problem(torch.float32, kernel_device)
    want = _reference(hidden, weight, targets)
    with torch.no_grad():
        loss = fused_linear_cross_entropy_triton(hidden, weight, targets, chunk_size=16)
    torch.testing.assert_close(loss, want[0], atol=2e-5, rtol=2e-5)

    h = hidden.clone().requires_grad_()  # frozen output layer: only grad_hidden
    fused_linear_cross_entropy_triton(h, weight, targets, chunk_size=16).backward()
    torch.testing.assert_close(h.grad, want[1], atol=2e-5, rtol=2e-5)


def test_flce_never_materialises_full_logits(kernel_device, monkeypatch) -> None:
    """Every logits buffer handed to the per-chunk kernel has at most ``chunk`` rows."""
    seen: list[tuple[int, int]] = []
    real = flce._triton_chunk_step

    def spy(logits, *args):
        seen.append(tuple(logits.shape))
        return real(logits, *args)

    monkeypatch.setattr(flce, "_triton_chunk_step", spy)
    hidden, weight, targets = _problem(torch.float32, kernel_device)
    hidden.requires_grad_()
    flce.fused_linear_cross_entropy_triton(hidden, weight, targets, chunk_size=8).backward()
    assert seen == [(8, V)] * 4 + [(5, V)]


def test_default_chunk_size_tracks_vocab_to_hidden_ratio() -> None:
    # logits buffer ~ hidden size: 16384 tokens * 4096 / (128256 / 4096 -> 32) = 512 rows.
    assert default_chunk_size(16384, 4096, 128256) == 512
    assert default_chunk_size(37, 33, 301) == 4
    assert default_chunk_size(3, 4096, 100) == 3


def test_chunk_rows_floor_keeps_gpu_chunks_large_enough() -> None:
    # The memory rule alone gives a 256-wide model with a 49k vocabulary 16-row chunks.
    assert default_chunk_size(2048, 256, 49152) == 16
    assert flce.chunk_rows(2048, 256, 49152, torch.device("cpu"), 4) == 256
    # bf16 on CUDA: at least 64 MiB of logits per chunk, 682 rows -> 1024 (a power of two)
    assert flce.chunk_rows(2048, 256, 49152, torch.device("cuda"), 2) == 1024
    assert flce.chunk_rows(300, 256, 49152, torch.device("cuda"), 2) == 300  # never > n_tokens
    # where the memory rule already asks for more, it stands
    assert flce.chunk_rows(65536, 4096, 128256, torch.device("cuda"), 2) == 2048


@pytest.mark.parametrize("impl", list(IMPLS))
def test_flce_under_autocast_projects_in_the_autocast_dtype(kernel_device, impl) -> None:
    """Under bf16 autocast the projection runs in bf16 (as ``lm_head`` would), the loss stays
    fp32, and the fp32 master tensors get fp32 gradients that match ``lm_head`` +
    ``cross_entropy`` under the same autocast."""
    seen: list[torch.dtype] = []
    real = flce._triton_chunk_step if impl == "triton" else flce._torch_chunk_step

    def spy(logits, *args):
        seen.append(logits.dtype)
        return real(logits, *args)

    def fn(h, w, t):
        return flce.fused_linear_cross_entropy_chunked(h, w, t, step=spy)

    hidden, weight, targets = _problem(torch.float32, kernel_device)
    with torch.autocast(kernel_device.type, dtype=torch.bfloat16):
        got = _loss_and_grads(fn, hidden, weight, targets)
        want = _loss_and_grads(fused_linear_cross_entropy_reference, hidden, weight, targets)
    assert seen and set(seen) == {torch.bfloat16}
    assert got[0].dtype == torch.float32
    assert got[1].dtype == got[2].dtype == torch.float32
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-2, rtol=5e-2)
