"""Triton RoPE vs. the HF-convention PyTorch reference (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from datadiet.kernels.rope import apply_rope_reference, apply_rope_triton


def _rope_tables(batch: int | None, n_t: int, dim: int, dtype: torch.dtype, gen: torch.Generator):
    """HF-style duplicated-halves tables (or random ones, which the kernel must also handle)."""
    inv = 1.0 / (10000 ** (torch.arange(0, dim - dim % 2, 2).float() / max(dim, 1)))
    pos = torch.arange(n_t).float()
    if batch is not None:
        pos = pos + torch.randint(0, 50, (batch, 1), generator=gen).float()
    freqs = pos[..., None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    if emb.shape[-1] < dim:  # odd D: no HF table exists; use random values of the right shape
        emb = torch.randn(*emb.shape[:-1], dim, generator=gen)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _run(fn, q, k, cos, sin, dq, dk):
    ql, kl = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    qo, ko = fn(ql, kl, cos, sin)
    torch.autograd.backward([qo, ko], [dq, dk])
    return qo, ko, ql.grad, kl.grad


@pytest.mark.parametrize(
    ("dtype", "head_dim", "per_batch_tables"),
    [
        (torch.float32, 8, False),
        (torch.float32, 10, True),  # D not a power of two, [B, T, D] tables
        (torch.float32, 7, False),  # odd D: rotate_half halves of length 3 and 4
        (torch.float32, 9, True),
        (torch.float16, 10, False),
        (torch.bfloat16, 6, True),
    ],
)
def test_rope_forward_backward(kernel_device, close, dtype, head_dim, per_batch_tables) -> None:
    gen = torch.Generator().manual_seed(head_dim)
    batch, heads, kv_heads, n_t = 2, 6, 2, 7  # GQA (3 q heads per kv head), odd T
    # q laid out as the attention projection produces it: [B, T, H, D] viewed as [B, H, T, D].
    q = torch.randn(batch, n_t, heads, head_dim, generator=gen).transpose(1, 2)
    k = torch.randn(batch, kv_heads, n_t, head_dim, generator=gen)
    cos, sin = _rope_tables(batch if per_batch_tables else None, n_t, head_dim, dtype, gen)
    dq = torch.randn(q.shape, generator=gen)
    dk = torch.randn(k.shape, generator=gen)
    to = lambda t: t.to(kernel_device, dtype)  # noqa: E731
    q, k, dq, dk = to(q), to(k), to(dq), to(dk)
    cos, sin = cos.to(kernel_device), sin.to(kernel_device)
    assert not q.is_contiguous()

    got = _run(apply_rope_triton, q, k, cos, sin, dq, dk)
    want = _run(apply_rope_reference, q, k, cos, sin, dq, dk)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        close(g, w, dtype)


def test_rope_broadcast_batch_of_one_table(kernel_device, close) -> None:
    """HF passes cos/sin as [1, T, D] for a batch; that must broadcast over B."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 8, generator=gen).to(kernel_device)
    k = torch.randn(3, 1, 5, 8, generator=gen).to(kernel_device)
    cos, sin = _rope_tables(None, 5, 8, torch.float32, gen)
    cos, sin = cos[None].to(kernel_device), sin[None].to(kernel_device)
    for g, w in zip(
        apply_rope_triton(q, k, cos, sin), apply_rope_reference(q, k, cos, sin), strict=True
    ):
        close(g, w, torch.float32)


def test_rope_rejects_mismatched_tables(kernel_device) -> None:
    q = torch.randn(1, 2, 5, 8).to(kernel_device)
    k = torch.randn(1, 2, 5, 8).to(kernel_device)
    bad = torch.randn(4, 8).to(kernel_device)
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rope_triton(q, k, bad, bad)
