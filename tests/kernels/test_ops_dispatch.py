"""Backend selection of the public kernel API (``datadiet.kernels.ops``)."""

from __future__ import annotations

import pytest
import torch

from datadiet.kernels import flce, ops
from datadiet.kernels.flce import fused_linear_cross_entropy_reference
from datadiet.kernels.rmsnorm import add_rms_norm_reference, rms_norm_reference
from datadiet.kernels.rope import apply_rope_reference
from datadiet.kernels.swiglu import swiglu_reference

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU without the interpreter and no backend forced: what a laptop/CI run sees."""
    if HAS_CUDA:
        pytest.skip("checks the CPU fallback; this machine has CUDA")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(ops.ENV_VAR, raising=False)


def _inputs(requires_grad: bool = True):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=gen, requires_grad=requires_grad)
    r = torch.randn(2, 5, 16, generator=gen)
    w = torch.rand(16, generator=gen) + 0.5
    q = torch.randn(2, 4, 5, 8, generator=gen)
    k = torch.randn(2, 2, 5, 8, generator=gen)
    cos, sin = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    hidden = torch.randn(9, 16, generator=gen, requires_grad=requires_grad)
    weight = torch.randn(31, 16, generator=gen)
    targets = torch.randint(0, 31, (9,), generator=gen)
    targets[::3] = -100
    return x, r, w, q, k, cos, sin, hidden, weight, targets


def _grad_fn_name(t: torch.Tensor) -> str:
    return type(t.grad_fn).__name__ if t.grad_fn is not None else ""


# --------------------------------------------------------------------------- selection


def test_auto_on_plain_cpu_uses_reference(plain_cpu) -> None:
    assert ops.requested_backend() == "auto"
    assert ops.backend("cpu") == "torch"
    x, r, w, q, k, cos, sin, hidden, weight, targets = _inputs()
    torch.testing.assert_close(ops.rms_norm(x, w), rms_norm_reference(x, w), atol=0, rtol=0)
    for a, b in zip(ops.add_rms_norm(x, r, w), add_rms_norm_reference(x, r, w), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for a, b in zip(
        ops.apply_rope(q, k, cos, sin), apply_rope_reference(q, k, cos, sin), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(ops.swiglu(x, r), swiglu_reference(x, r), atol=0, rtol=0)
    assert "RMSNormFunction" not in _grad_fn_name(ops.rms_norm(x, w))
    # FLCE on the torch backend is the chunked PyTorch implementation, not the materialising one.
    loss = ops.fused_linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert _grad_fn_name(loss) == "FusedLinearCrossEntropyFunctionBackward"
    ref = fused_linear_cross_entropy_reference(hidden, weight, targets)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(loss, hidden)
    (g_ref,) = torch.autograd.grad(ref, hidden)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)


def test_env_var_and_context_manager(plain_cpu, monkeypatch) -> None:
    monkeypatch.setenv(ops.ENV_VAR, "compile")
    assert ops.backend("cpu") == "compile"
    with ops.use_backend("torch"):
        assert ops.backend("cpu") == "torch"
        with ops.use_backend("AUTO"):
            assert ops.requested_backend() == "auto"
        assert ops.requested_backend() == "torch"
    assert ops.requested_backend() == "compile"  # restored after the block
    monkeypatch.setenv(ops.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        ops.backend("cpu")
    with pytest.raises(ValueError, match="unknown kernel backend"), ops.use_backend("fast"):
        pass


def test_forcing_triton_where_it_cannot_run_raises(plain_cpu) -> None:
    x, _, w, *_ = _inputs()
    with ops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            ops.backend("cpu")
        with pytest.raises(RuntimeError, match="forced"):
            ops.rms_norm(x, w)


def test_compile_backend_routes_through_torch_compile(plain_cpu, monkeypatch) -> None:
    """Routing only: a stub stands in for torch.compile (a real CPU compile takes ~30 s)."""
    compiled: list[str] = []

    def fake_compile(fn, **kwargs):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(ops, "_compiled", {})
    monkeypatch.setattr(flce, "_compiled_step", None)
    x, r, w, q, k, cos, sin, hidden, weight, targets = _inputs()
    with ops.use_backend("compile"):
        ops.rms_norm(x, w)
        ops.rms_norm(x, w)  # cached: compiled once
        ops.add_rms_norm(x, r, w)
        ops.apply_rope(q, k, cos, sin)
        ops.swiglu(x, r)
        loss = ops.fused_linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert compiled == [
        "rms_norm_reference",
        "add_rms_norm_reference",
        "apply_rope_reference",
        "swiglu_reference",
        "_torch_chunk_step",
    ]
    ref = fused_linear_cross_entropy_reference(hidden, weight, targets)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- triton routing


def test_auto_uses_triton_kernels_when_they_can_run(kernel_device, monkeypatch) -> None:
    assert ops.backend(kernel_device) == "triton"
    x, r, w, q, k, cos, sin, hidden, weight, targets = (
        t.to(kernel_device).detach().requires_grad_(t.requires_grad) for t in _inputs()
    )
    assert _grad_fn_name(ops.rms_norm(x, w)) == "RMSNormFunctionBackward"
    assert _grad_fn_name(ops.add_rms_norm(x, r, w)[0]) == "AddRMSNormFunctionBackward"
    assert (
        _grad_fn_name(ops.apply_rope(q.requires_grad_(), k, cos, sin)[0]) == "RoPEFunctionBackward"
    )
    assert _grad_fn_name(ops.swiglu(x, r)) == "SwiGLUFunctionBackward"

    calls: list[int] = []
    real = flce._triton_chunk_step
    monkeypatch.setattr(flce, "_triton_chunk_step", lambda lg, *a: (calls.append(1), real(lg, *a)))
    loss = ops.fused_linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert calls, "the Triton cross-entropy kernel was not used"
    torch.testing.assert_close(
        loss, fused_linear_cross_entropy_reference(hidden, weight, targets), atol=1e-5, rtol=1e-5
    )


def test_auto_falls_back_for_unsupported_dtype_and_respects_override(kernel_device) -> None:
    x = torch.randn(3, 8, dtype=torch.float64, device=kernel_device, requires_grad=True)
    w = torch.ones(8, dtype=torch.float64, device=kernel_device)
    assert "RMSNormFunction" not in _grad_fn_name(ops.rms_norm(x, w))  # fp64: reference
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="unsupported"):
        ops.rms_norm(x, w)
    x32 = x.detach().float().requires_grad_()
    with ops.use_backend("torch"):
        assert "RMSNormFunction" not in _grad_fn_name(ops.rms_norm(x32, w.float()))
    assert _grad_fn_name(ops.rms_norm(x32, w.float())) == "RMSNormFunctionBackward"


def test_launch_helpers() -> None:
    from datadiet.kernels._triton_utils import next_power_of_2, row_tile

    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 123, 128, 129)] == [1, 1, 2, 4, 128, 128, 256]
    assert row_tile(576) == (1024, 4, 8)  # narrow rows: several per program
    assert row_tile(4096)[:2] == (4096, 1)
    with pytest.raises(ValueError, match="exceeds"):
        row_tile(70000)
