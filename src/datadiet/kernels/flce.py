"""Fused linear + cross-entropy that never materialises the full ``[N, V]`` logits.

For a 128k vocabulary and 16k tokens the logits alone are 8 GiB in fp32 (plus as much again
for their gradient), usually the largest tensor in an LLM training step. Here the tokens are
processed in chunks; per chunk:

1. ``logits = h_chunk @ W.T`` (a cuBLAS matmul, in the input dtype);
2. one Triton program per row computes the log-sum-exp with an online (running max) softmax,
   the row's loss, and overwrites the logits *in place* with their gradient
   ``(softmax - onehot) * scale`` (zero for ``ignore_index`` rows), upcasting to fp32 inside;
3. ``grad_h_chunk = dlogits @ W`` and ``grad_W += dlogits.T @ h_chunk``.

So the backward pass is done during the forward and only ``grad_hidden`` ``[N, H]`` and
``grad_weight`` ``[V, H]`` are kept; ``backward`` merely scales them by ``grad_output``. Peak
extra memory is one ``[chunk, V]`` buffer, with the default chunk chosen so that this buffer
is about the size of ``hidden`` itself.

The same chunked ``autograd.Function`` also runs with a PyTorch per-chunk step (CPU, or when
the torch/compile backend is forced), so every backend keeps the memory property.

Numerics: the loss and the softmax are computed in fp32. For fp16 inputs the per-chunk
gradient is left unscaled in the fp16 buffer and the ``1/n_valid`` scale is applied while
accumulating into fp32 buffers: ``softmax * (1/n_valid)`` would underflow fp16 for large
vocabularies (``1e-5 * 1e-4`` is below fp16's smallest subnormal). bf16 has fp32's exponent
range, so for bf16 and fp32 the scale is applied inside the kernel and the gradients are
accumulated in the input dtype (as large-vocabulary training normally does, to keep
``grad_weight`` at the weight's size).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datadiet.kernels._triton_utils import lazy_jit, next_power_of_2

tl: Any = None  # bound to ``triton.language`` by LazyKernel on first launch

# Signature of a per-chunk step: (logits [n, V] modified in place into dlogits, targets [n],
# loss_out [n] fp32, scale, ignore_index) -> None.
ChunkStep = Callable[[Tensor, Tensor, Tensor, float, int], None]


# --------------------------------------------------------------------------- reference


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


# --------------------------------------------------------------------------- kernel


@lazy_jit
def _ce_fwd_bwd_kernel(
    LOGITS,
    stride_row,
    TARGETS,
    LOSS,
    n_cols,
    ignore_index,
    scale,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = LOGITS + row * stride_row
    target = tl.load(TARGETS + row)
    cols = tl.arange(0, BLOCK)
    if target == ignore_index:
        # Ignored (padding / prompt) rows contribute nothing; skip the softmax entirely.
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            tl.store(
                row_ptr + offs,
                tl.full([BLOCK], 0.0, tl.float32).to(LOGITS.dtype.element_ty),
                mask=offs < n_cols,
            )
        tl.store(LOSS + row, 0.0)
        return

    # Pass 1: online log-sum-exp. The running max `m` keeps exp() in range; when it grows the
    # running sum is rescaled by exp(m_old - m_new). One read of the row, O(1) state.
    m = -float("inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        x = tl.load(row_ptr + offs, mask=offs < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    x_target = tl.load(row_ptr + target).to(tl.float32)
    tl.store(LOSS + row, lse - x_target)

    # Pass 2: overwrite the logits with d(loss)/d(logits) = softmax - onehot (scaled).
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        x = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)
        grad = tl.where(offs == target, p - 1.0, p) * scale
        tl.store(row_ptr + offs, grad.to(LOGITS.dtype.element_ty), mask=mask)


def _triton_chunk_step(
    logits: Tensor, targets: Tensor, loss_out: Tensor, scale: float, ignore_index: int
) -> None:
    n_rows, n_cols = logits.shape
    block, warps = launch_params(n_cols, logits.is_cuda)
    if n_rows:
        _ce_fwd_bwd_kernel[(n_rows,)](
            logits,
            logits.stride(0),
            targets,
            loss_out,
            n_cols,
            ignore_index,
            scale,
            BLOCK=block,
            num_warps=warps,
        )


def launch_params(n_cols: int, on_gpu: bool = True) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of the per-row kernel.

    Looping over the vocabulary in blocks bounds register use independently of V; 4096 fp32
    values per block over 8 warps is 16 per thread (32768 in the interpreter, where block size
    costs nothing and fewer iterations are faster).
    """
    block = min(next_power_of_2(n_cols), 4096 if on_gpu else 32768)
    return block, 8 if block >= 2048 else 4


def _torch_chunk_step(
    logits: Tensor, targets: Tensor, loss_out: Tensor, scale: float, ignore_index: int
) -> None:
    """PyTorch version of the kernel: same contract, used off-GPU and as a fallback.

    One ``log_softmax`` pass gives both the loss (``-logp[target]``) and, exponentiated in
    place, the softmax for the gradient — no second full-width temporary, which on CPU halves
    the time of this step against a logsumexp + exp formulation.
    """
    valid = targets != ignore_index
    safe_t = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    loss_out.copy_(torch.where(valid, -logp.gather(1, safe_t).squeeze(1), 0.0))
    grad = logp.exp_()
    grad.scatter_add_(1, safe_t, torch.full_like(safe_t, -1.0, dtype=grad.dtype))
    grad.mul_(valid.unsqueeze(1).to(grad.dtype) * scale)
    logits.copy_(grad)


_compiled_step: ChunkStep | None = None


def compiled_chunk_step() -> ChunkStep:
    """``torch.compile`` of the PyTorch chunk step, built on first use (compiling is slow)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_torch_chunk_step, dynamic=True)
    return _compiled_step


# --------------------------------------------------------------------------- driver


def default_chunk_size(n_tokens: int, hidden: int, vocab: int) -> int:
    """Chunk so that the ``[chunk, V]`` logits buffer is about as large as ``hidden`` itself.

    Larger chunks give cuBLAS bigger matmuls but grow the buffer linearly; matching the hidden
    activation's size keeps the peak flat. Rounded to a power of two for matmul-friendly tiles.
    """
    ratio = max(1, math.ceil(vocab / max(hidden, 1)))
    return max(1, min(n_tokens, next_power_of_2(math.ceil(n_tokens / ratio))))


#: CPU GEMMs with a few rows run far below peak; below this many rows per chunk the fused loss
#: is slower than the materialising reference (measured on 2 cores: 8 rows 2.5x slower, 128+
#: rows as fast). 256 x 49k x 4 B = 50 MB of logits, still far below the full [N, V].
CPU_MIN_CHUNK = 256

#: On a GPU a chunk sized only by the memory rule can be tiny (a 256-wide model with a 49k
#: vocabulary gets 16-row chunks: 128 chunks of four launches each for 2K tokens, launch-bound),
#: so its logits buffer is given at least this many bytes: 64 MiB is a few percent of the
#: ``[N, V]`` logits the fused loss avoids at 8K+ tokens, and enough rows to fill the GPU.
GPU_MIN_CHUNK_BYTES = 64 * 2**20


def chunk_rows(n_tokens: int, hidden: int, vocab: int, device: torch.device,
               element_size: int) -> int:
    """Rows per chunk when the caller gives none: the memory rule, floored per device."""
    chunk = default_chunk_size(n_tokens, hidden, vocab)
    if device.type == "cpu":
        chunk = max(chunk, CPU_MIN_CHUNK)
    elif device.type == "cuda":
        chunk = max(chunk, next_power_of_2(GPU_MIN_CHUNK_BYTES // (vocab * element_size)))
    return max(1, min(chunk, n_tokens))


def _fused_forward(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int,
    reduction: str,
    chunk_size: int | None,
    need_grad_h: bool,
    need_grad_w: bool,
    step: ChunkStep,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss plus (already reduction-scaled) gradients for hidden and weight."""
    n_tokens, h_dim = hidden.shape
    vocab = weight.shape[0]
    if weight.shape[1] != h_dim:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {h_dim}")
    if targets.shape != (n_tokens,):
        raise ValueError(f"targets {tuple(targets.shape)} must be [{n_tokens}]")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    dtype = hidden.dtype
    device = hidden.device
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    targets = targets.contiguous()

    n_valid_t = (targets != ignore_index).sum()
    # One host sync per call: the scale must be a number for the kernel and for addmm's alpha.
    # Negligible next to the N*V*H matmuls this function performs.
    n_valid = int(n_valid_t.item())
    scale = (1.0 / n_valid if n_valid > 0 else 0.0) if reduction == "mean" else 1.0
    # fp16 cannot hold softmax * scale for large V; see module docstring.
    scale_in_kernel = dtype != torch.float16
    acc_dtype = torch.float32 if dtype == torch.float16 else dtype

    grad_h = torch.empty((n_tokens, h_dim), dtype=acc_dtype, device=device) if need_grad_h else None
    grad_w = torch.zeros((vocab, h_dim), dtype=acc_dtype, device=device) if need_grad_w else None
    loss_rows = torch.empty(n_tokens, dtype=torch.float32, device=device)

    chunk = chunk_size or chunk_rows(n_tokens, h_dim, vocab, device, hidden.element_size())
    chunk = max(1, min(chunk, n_tokens)) if n_tokens else 1
    buffer = torch.empty((chunk, vocab), dtype=dtype, device=device)
    w_t = weight.t()
    for start in range(0, n_tokens, chunk):
        end = min(start + chunk, n_tokens)
        h_c = hidden[start:end]
        logits = buffer[: end - start]
        torch.mm(h_c, w_t, out=logits)
        step(
            logits,
            targets[start:end],
            loss_rows[start:end],
            scale if scale_in_kernel else 1.0,
            ignore_index,
        )
        dlogits = logits  # overwritten in place by the step
        if scale_in_kernel:
            if grad_h is not None:
                torch.mm(dlogits, weight, out=grad_h[start:end])
            if grad_w is not None:
                grad_w.addmm_(dlogits.t(), h_c)
        else:
            if grad_h is not None:
                torch.mul(torch.mm(dlogits, weight), scale, out=grad_h[start:end])
            if grad_w is not None:
                grad_w.add_(torch.mm(dlogits.t(), h_c), alpha=scale)

    total = loss_rows.sum()
    # Like F.cross_entropy, a mean over zero valid tokens is NaN (0/0); gradients are zero.
    loss = total / n_valid_t.to(torch.float32) if reduction == "mean" else total
    return loss, grad_h, grad_w


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Chunked linear + cross-entropy; gradients are computed in forward, scaled in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        ignore_index: int,
        reduction: str,
        chunk_size: int | None,
        step: ChunkStep,
    ) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, grad_h, grad_w = _fused_forward(
            hidden, weight, targets, ignore_index, reduction, chunk_size, need_h, need_w, step
        )
        ctx.save_for_backward(
            grad_h if grad_h is not None else torch.empty(0),
            grad_w if grad_w is not None else torch.empty(0),
        )
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if getattr(ctx, "consumed", False):
            raise RuntimeError("fused_linear_cross_entropy: backward through the same graph twice "
                               "(retain_graph=True) is not supported; its gradients are scaled "
                               "in place")
        ctx.consumed = True
        grad_h, grad_w = ctx.saved_tensors
        has_h, has_w = ctx.has
        go = grad_output.to(torch.float32)
        # Scale in place: the saved gradients are ours alone, and a second weight-sized buffer
        # would cost as much memory as the whole chunked forward saved (113 MB at SmolLM2 size).
        out_h = grad_h.mul_(go).to(ctx.dtypes[0]) if has_h else None
        out_w = grad_w.mul_(go).to(ctx.dtypes[1]) if has_w else None
        return out_h, out_w, None, None, None, None, None


def fused_linear_cross_entropy_chunked(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    step: ChunkStep | None = None,
) -> Tensor:
    """Chunked fused linear cross-entropy with a pluggable per-chunk step.

    ``step`` defaults to the Triton kernel; pass :func:`_torch_chunk_step` (or
    :func:`compiled_chunk_step`) to run the same algorithm without Triton. Leading dimensions of
    ``hidden``/``targets`` are flattened.
    """
    if hidden.dim() != 2:
        hidden = hidden.reshape(-1, hidden.shape[-1])
        targets = targets.reshape(-1)
    step = step or _triton_chunk_step
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # Under autocast ``lm_head`` + ``cross_entropy`` would run the projection in the
        # autocast dtype; do the same (the ``.to`` casts carry the gradients back to the fp32
        # master weights), and switch autocast off inside so the ``out=`` matmuls and in-place
        # accumulations see exactly the dtypes chosen here.
        cast = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return fused_linear_cross_entropy_chunked(
                hidden.to(cast), weight.to(cast), targets, ignore_index, reduction, chunk_size, step
            )
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        with torch.no_grad():  # evaluation: same kernel, no gradient matmuls
            loss, _, _ = _fused_forward(
                hidden, weight, targets, ignore_index, reduction, chunk_size, False, False, step
            )
        return loss
    return FusedLinearCrossEntropyFunction.apply(
        hidden, weight, targets, ignore_index, reduction, chunk_size, step
    )


def fused_linear_cross_entropy_triton(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Fused linear cross-entropy with the Triton per-row kernel."""
    return fused_linear_cross_entropy_chunked(
        hidden, weight, targets, ignore_index, reduction, chunk_size, _triton_chunk_step
    )


def fused_linear_cross_entropy_torch(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Same chunked algorithm with the per-chunk step in PyTorch (no Triton needed)."""
    return fused_linear_cross_entropy_chunked(
        hidden, weight, targets, ignore_index, reduction, chunk_size, _torch_chunk_step
    )
