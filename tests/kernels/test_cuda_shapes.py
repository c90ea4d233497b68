"""The Triton kernels at model sizes on a real GPU: launch configurations the small odd shapes of
the other kernel tests never reach (4096-wide rows over 8+ warps, packed narrow rows, 64/128-wide
heads, a 49k vocabulary), every dtype, against a float64 reference on the same inputs.

Errors are measured as ``‖out − ref‖ / ‖ref‖`` (what the precision of the storage dtype bounds:
fp32 far under 1e-5, fp16 ~5e-4, bf16 ~4e-3), so one bad element in a big tensor still shows
while rounding does not. These only run where CUDA is available; the interpreter would need
minutes per case.
"""

from __future__ import annotations

import pytest
import torch

from datadiet.kernels.flce import (
    fused_linear_cross_entropy_reference,
    fused_linear_cross_entropy_triton,
)
from datadiet.kernels.model import Llama, LlamaConfig
from datadiet.kernels.rmsnorm import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from datadiet.kernels.rope import apply_rope_reference, apply_rope_triton
from datadiet.kernels.swiglu import swiglu_reference, swiglu_triton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    assert torch.isfinite(got).all(), "non-finite values in the kernel output"
    diff = (got.double() - want.double()).norm()
    return float(diff / want.double().norm().clamp_min(1e-30))


def _randn(*shape: int, dtype: torch.dtype, scale: float = 1.0, offset: float = 0.0):
    return (torch.randn(*shape, device="cuda") * scale + offset).to(dtype)


def _grads(fn, inputs: list[torch.Tensor], upstream: list[torch.Tensor], f64: bool):
    leaves = [t.detach().double() if f64 else t.detach().clone() for t in inputs]
    leaves = [t.requires_grad_() if t.is_floating_point() else t for t in leaves]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    ups = [u.double() if f64 else u for u in upstream]
    torch.autograd.backward(list(outs), ups)
    return [o.detach() for o in outs] + [t.grad for t in leaves if t.requires_grad]


def _compare(kernel, reference, inputs, upstream, dtype, grad_scale: float = 1.0) -> None:
    got = _grads(kernel, inputs, upstream, f64=False)
    want = _grads(reference, inputs, upstream, f64=True)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        err = rel_err(g, w)
        assert err < REL_TOL[dtype] * grad_scale, f"tensor {i}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [576, 2048, 4096, 5001])
def test_rms_norm_model_sizes(dtype, hidden) -> None:
    torch.manual_seed(hidden)
    rows = 2053  # not a multiple of any tile or of the SM count
    x = _randn(rows, hidden, dtype=dtype)
    w = _randn(hidden, dtype=dtype, scale=0.1, offset=1.0)
    dy = _randn(rows, hidden, dtype=dtype)
    _compare(rms_norm_triton, rms_norm_reference, [x, w], [dy], dtype, grad_scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [576, 4096])
def test_add_rms_norm_model_sizes(dtype, hidden) -> None:
    torch.manual_seed(hidden + 1)
    rows = 1031
    x, r = _randn(rows, hidden, dtype=dtype), _randn(rows, hidden, dtype=dtype)
    w = _randn(hidden, dtype=dtype, scale=0.1, offset=1.0)
    dy, ds = _randn(rows, hidden, dtype=dtype), _randn(rows, hidden, dtype=dtype)
    _compare(add_rms_norm_triton, add_rms_norm_reference, [x, r, w], [dy, ds], dtype, 2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [1536, 14336, 1001])
def test_swiglu_model_sizes(dtype, inter) -> None:
    torch.manual_seed(inter)
    fused = _randn(517, 2 * inter, dtype=dtype)  # halves of a fused gate/up projection
    gate, up = fused.chunk(2, dim=-1)
    dy = _randn(517, inter, dtype=dtype)
    _compare(swiglu_triton, swiglu_reference, [gate, up], [dy], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (32, 8, 128)])
def test_rope_model_sizes(dtype, heads, kv_heads, head_dim) -> None:
    torch.manual_seed(head_dim)
    batch, n_t = 3, 1001
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim))
    freqs = torch.arange(n_t, device="cuda").float()[:, None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q = _randn(batch, n_t, heads, head_dim, dtype=dtype).transpose(1, 2)  # projection layout
    k = _randn(batch, n_t, kv_heads, head_dim, dtype=dtype).transpose(1, 2)
    dq, dk = _randn(*q.shape, dtype=dtype), _randn(*k.shape, dtype=dtype)

    def kernel(q, k):
        return apply_rope_triton(q, k, cos, sin)

    def reference(q, k):
        return apply_rope_reference(q, k, cos.double(), sin.double())

    _compare(kernel, reference, [q, k], [dq, dk], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_tokens", [1, 1003])
def test_flce_full_vocabulary(dtype, n_tokens) -> None:
    """SmolLM2's 49,152-token vocabulary with the default chunking (ragged last chunk)."""
    torch.manual_seed(n_tokens)
    hidden, vocab = 576, 49152
    h = _randn(n_tokens, hidden, dtype=dtype)
    w = _randn(vocab, hidden, dtype=dtype, scale=hidden**-0.5)
    targets = torch.randint(0, vocab, (n_tokens,), device="cuda")
    targets[1::7] = -100

    def reference(h, w):
        return fused_linear_cross_entropy_reference(h, w, targets)

    def kernel(h, w):
        return fused_linear_cross_entropy_triton(h, w, targets)

    got = _grads(kernel, [h, w], [torch.tensor(1.0, device="cuda")], f64=False)
    want = _grads(reference, [h, w], [torch.tensor(1.0, device="cuda")], f64=True)
    # The loss is accumulated in fp32 from logits rounded to the input dtype.
    assert got[0].item() == pytest.approx(want[0].item(), rel=REL_TOL[dtype])
    for i in (1, 2):
        err = rel_err(got[i], want[i])
        assert err < 2 * REL_TOL[dtype], f"gradient {i}: relative error {err:.2e}"


def test_small_model_bf16_autocast_triton_matches_torch_backend() -> None:
    """One training step of a shrunken ``small`` model under bf16 autocast, as the trainer runs
    on CUDA: the Triton path and the PyTorch references agree on loss and every gradient."""
    from datadiet.kernels import ops

    torch.manual_seed(0)
    cfg = LlamaConfig.preset("small", n_layers=2)
    model = Llama(cfg).cuda().train()
    ids = torch.randint(0, cfg.vocab_size, (4, 129), device="cuda")

    def run(backend: str) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with ops.use_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids[:, :-1], ids[:, 1:]).loss
        loss.backward()
        return loss.item(), [p.grad.float() for p in model.parameters()]

    ref_loss, ref_grads = run("torch")
    loss, grads = run("triton")
    assert loss == pytest.approx(ref_loss, rel=2e-3)
    for i, (g, w) in enumerate(zip(grads, ref_grads, strict=True)):
        assert rel_err(g, w) < 3e-2, f"parameter {i}"
