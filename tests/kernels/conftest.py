"""Kernel-test fixtures: run the real Triton kernels on CPU through Triton's interpreter.

Triton fixes two things at import/decoration time:

* its own ``@triton.jit`` helpers (``tl.sum``/``tl.max`` among them) become interpreter objects
  only if ``TRITON_INTERPRET=1`` is set when ``triton`` is first imported;
* each kernel's mode is fixed when it is decorated (``datadiet.kernels`` decorates lazily, at
  first launch, so that part follows the variable at call time).

So, on a machine without CUDA, this conftest imports ``triton`` with the variable set and then
restores the environment: other test directories in the same session keep the plain PyTorch
backend and are not slowed down by the interpreter. Tests that want the kernels request the
``kernel_device`` fixture, which turns the interpreter on for that test only (or, on a CUDA
machine, returns ``cuda`` so the same tests run the compiled kernels).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA and "triton" not in sys.modules:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401  (imported for its side effect, see docstring)
    except ImportError:  # triton is an optional extra; the kernel tests skip without it
        pass
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous

# Per-dtype tolerances (atol, rtol) for kernel output vs. the PyTorch reference run in the
# same dtype. fp32: both sides compute in fp32, differences are summation order only.
# fp16: one rounding step apart (10-bit mantissa, ulp 2^-10 relative).
# bf16: 7-bit mantissa, and the interpreter converts fp32->bf16 by truncation (GPU rounds to
# nearest), so allow ~3 ulp.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


@pytest.fixture
def kernel_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[torch.device]:
    """Device on which the Triton kernels run for this test (interpreter on CPU)."""
    if HAS_CUDA:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        yield torch.device("cuda")
        return
    from datadiet.kernels._triton_utils import interpreter_ready, triton_available

    if not triton_available():
        pytest.skip("triton is not installed (optional extra 'kernels')")
    if not interpreter_ready():
        pytest.skip(
            "triton was imported before TRITON_INTERPRET=1 could be set, so its tl.sum/tl.max "
            "helpers cannot be interpreted; run `pytest tests/kernels` in its own process"
        )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DATADIET_KERNELS", raising=False)
    yield torch.device("cpu")


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> None:
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=atol * scale, rtol=rtol * scale
    )


@pytest.fixture
def close() -> Callable[..., None]:
    """``close(actual, expected, dtype, scale=1)``: assert_close in fp32 with the tolerance of
    ``dtype`` (times ``scale`` for quantities summed over many rows). A fixture rather than an
    importable helper because test directories here are not packages."""
    return _assert_close
