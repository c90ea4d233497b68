"""GPU benchmarks of the fused kernels and of the model stage, one part per claim of issue 15.

Parts (``--part``); each prints a table and, as its LAST line, one JSON object whose
``targets`` say which claims were met in this run:

* ``ops``: RMSNorm, fused add+RMSNorm, SwiGLU and RoPE, forward+backward in bf16: the eager
  reference, ``torch.compile`` of the same reference, ours (Triton) and Liger-Kernel when it is
  importable. Target: ours no slower than the compiled reference (within the spread of timing
  ours twice).
* ``flce``: fused linear cross-entropy against ``lm_head`` + ``cross_entropy`` (and Liger): peak
  memory and time, vocabulary 49,152 and 8K tokens first. Target: at least 4x less peak memory.
* ``train``: one optimizer step of the ``small`` preset as the trainer runs it on CUDA (bf16
  autocast, fused AdamW, gradient clipping) against the same step of transformers'
  ``LlamaForCausalLM`` holding the same weights. Target: at least 1.2x faster.
* ``generate``: greedy decoding through the inference stage's ``Generator`` against
  transformers' ``generate`` with the same weights (SmolLM2-135M's shape, random weights, since
  the real file is too big to carry), batch 1 and 8. Target: at least 1.5x faster.
* ``bf16``: 50 steps of the ``small`` preset under bf16 autocast against fp32, same init and data.
  Target: loss after 50 steps within 1%.

Every measurement is of this run: figures are medians of CUDA-event timings after warm-up, peak
memory is what one step allocates above what was live before it, and each candidate is first
checked against the eager result so a mis-wired comparison is reported instead of timed.

Usage::

    python benchmarks/kernels_gpu.py                        # every part, one process
    python benchmarks/kernels_gpu.py --part flce            # one part; see --help
    python benchmarks/kernels_gpu.py --part ops --quick     # one size per kernel
    python benchmarks/kernels_gpu.py --part train --smoke   # tiny shapes on CPU: logic only

``--tokens`` takes a ``.npy`` of token ids (real text for the training parts; synthetic
Zipf-distributed ids otherwise). ``benchmarks/gpu_session.py`` runs every part with time limits.
Without CUDA (and without ``--smoke``) a part prints ``{"skipped": "no CUDA device"}`` and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Timing the numpy interpreter would be meaningless, but a --smoke run without CUDA needs it to
# exercise the real kernels; either way it must be decided before triton is first imported.
if "--smoke" in sys.argv and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
else:
    os.environ.pop("TRITON_INTERPRET", None)

Tensors = tuple[torch.Tensor, ...]
PARTS = ("ops", "flce", "train", "generate", "bf16")


# --------------------------------------------------------------------------- measurement


@dataclass
class Bench:
    """Where and how to measure: CUDA events and allocator peaks, or wall clock on CPU."""

    device: torch.device
    smoke: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_kernel_ms(self, fn: Callable[[], Any]) -> float:
        """Median ms of ``fn`` with the L2 flushed before each call (``triton``'s do_bench)."""
        if not self.cuda:
            return self.time_ms(fn, warmup=1, iters=2)
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def time_ms(self, fn: Callable[[], Any], warmup: int, iters: int) -> float:
        """Median ms per call over ``iters`` calls after ``warmup`` (events on CUDA)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_mb(self, fn: Callable[[], Any], before: Callable[[], None] | None = None) -> float | None:
        """MiB allocated by one call of ``fn`` above what was live before it (CUDA only)."""
        if not self.cuda:
            return None
        if before is not None:
            before()
        self.sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        self.sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def _sig(x: float | None, digits: int = 4) -> float | None:
    """Round to significant digits (ratios span 0.001x..100x; fixed decimals would zero them)."""
    return None if x is None else float(f"{x:.{digits}g}")


def _target(value: float | None, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"value": _sig(value), "target": goal, "met": met}


def _outputs(result: Any) -> Tensors:
    return tuple(result) if isinstance(result, tuple | list) else (result,)


def _mismatch(got: Tensors, want: Tensors, tol: float = 3e-2) -> str | None:
    """None if every tensor matches to ``tol`` of its largest magnitude, else why not.

    Scale-relative because the tensors differ by orders of magnitude (a loss of ~11, weight
    gradients of ~1e-6); 3% is loose enough for bf16 rounding-order differences yet catches
    wiring errors (wrong argument order, missing scale, transposed layout).
    """
    if len(got) != len(want):
        return f"returned {len(got)} tensors, eager {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            return f"tensor {i}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        err = (g.float() - w.float()).abs().max().item()
        ref = w.float().abs().max().item()
        if not err <= tol * max(ref, 1e-30):
            return f"tensor {i}: max abs diff {err:.3g} vs max |eager| {ref:.3g}"
    return None


# --------------------------------------------------------------------------- kernel cases


@dataclass
class Case:
    """One kernel problem: an inputs factory, which inputs take gradients, the implementations."""

    kernel: str
    size: str
    make_inputs: Callable[[], dict[str, torch.Tensor]]
    grad_inputs: Sequence[str]
    impls: dict[str, Callable[..., Any]] = field(default_factory=dict)


def run_case(case: Case, bench: Bench, repeat_ours: bool) -> dict[str, Any]:
    """Check every implementation against eager, then time fwd+bwd and measure peak memory."""
    row: dict[str, Any] = {"kernel": case.kernel, "size": case.size}
    inputs = case.make_inputs()
    upstream: list[torch.Tensor] | None = None
    eager: Tensors | None = None

    def clear() -> None:
        for name in case.grad_inputs:
            inputs[name].grad = None

    for name, fn in case.impls.items():
        try:
            clear()
            outs = _outputs(fn(**inputs))
            if upstream is None:  # fixed random upstream gradients, the same for everyone
                gen = torch.Generator(device=bench.device).manual_seed(1)
                upstream = [
                    torch.randn(o.shape, generator=gen, device=o.device).to(o.dtype) for o in outs
                ]
            torch.autograd.backward(list(outs), upstream)
            # An adapter that keeps its own parameter leaves that input's .grad empty: skipped.
            got = tuple(o.detach() for o in outs) + tuple(
                inputs[g].grad if inputs[g].grad is not None else torch.zeros(0)
                for g in case.grad_inputs
            )
            if eager is None:
                eager = got
            else:
                keep = [i for i, t in enumerate(got) if t.numel() or not eager[i].numel()]
                problem = _mismatch(tuple(got[i] for i in keep), tuple(eager[i] for i in keep))
                if problem:
                    row[name] = {"error": f"mismatch vs eager: {problem}"}
                    continue
            del outs, got

            def step(fn: Callable[..., Any] = fn, ups: list[torch.Tensor] = upstream) -> None:
                clear()
                torch.autograd.backward(list(_outputs(fn(**inputs))), ups)

            entry: dict[str, Any] = {"ms": bench.time_kernel_ms(step)}
            if repeat_ours and name == "ours":  # the timing spread, to tell noise from a gap
                entry["ms_again"] = bench.time_kernel_ms(step)
            entry["peak_mb"] = bench.peak_mb(step, before=clear)
            row[name] = entry
        except torch.cuda.OutOfMemoryError:
            row[name] = {"error": "out of memory"}
        except Exception as exc:  # a broken third-party adapter must not end the run
            row[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        finally:
            clear()
            if bench.cuda:
                torch.cuda.empty_cache()
    return row


def _liger() -> dict[str, Callable[..., Any]]:
    """Liger-Kernel adapters with our call signatures (empty if it is not installed)."""
    try:
        from liger_kernel.transformers import functional as lf
    except Exception:
        return {}
    return {
        # in_place=False: Liger's default writes dX into dY, and the upstream gradient is reused.
        "rms_norm": lambda x, weight: lf.liger_rms_norm(x, weight, 1e-6, in_place=False),
        "add_rms_norm": lambda x, residual, weight: lf.liger_fused_add_rms_norm(
            x, residual, weight, 1e-6, in_place=False
        ),
        "swiglu": lambda gate, up: lf.liger_swiglu(gate, up),
        "rope": lambda q, k, cos, sin: lf.liger_rope(q, k, cos, sin),
        "flce": lambda hidden, weight, targets: lf.liger_fused_linear_cross_entropy(
            hidden, weight, targets
        ),
    }


# Llama-family shapes: SmolLM2-135M (576 wide), Llama-3-8B (4096 wide).
OPS_SHAPES = {
    "rms_norm": [576, 4096],
    "swiglu": [1536, 14336],
    "rope": [(9, 3, 64), (32, 8, 128)],
}


def ops_cases(bench: Bench, quick: bool, dtype: torch.dtype) -> list[Case]:
    from datadiet.kernels.rmsnorm import (
        add_rms_norm_reference,
        add_rms_norm_triton,
        rms_norm_reference,
        rms_norm_triton,
    )
    from datadiet.kernels.rope import apply_rope_reference, apply_rope_triton
    from datadiet.kernels.swiglu import swiglu_reference, swiglu_triton

    dev = bench.device
    liger = _liger()
    n_tok = 64 if bench.smoke else 16384
    pick = (lambda xs: xs[:1]) if quick else (lambda xs: xs)
    widths = [40] if bench.smoke else pick(OPS_SHAPES["rms_norm"])
    inters = [48] if bench.smoke else pick(OPS_SHAPES["swiglu"])
    heads = [(4, 2, 8)] if bench.smoke else pick(OPS_SHAPES["rope"])

    def rand(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        t = torch.randn(*shape, device=dev) * scale + offset
        return t.to(dtype).requires_grad_()

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(fn, dynamic=False)

    def impls(kernel: str, eager: Callable[..., Any], ours: Callable[..., Any]) -> dict:
        out = {"eager": eager, "compile": compiled(eager), "ours": ours}
        if kernel in liger:
            out["liger"] = liger[kernel]
        return out

    cases = []
    for h in widths:
        cases.append(Case(
            "rms_norm", f"T={n_tok} H={h}",
            lambda h=h: {"x": rand(n_tok, h), "weight": rand(h, scale=0.1, offset=1.0)},
            ["x", "weight"],
            impls("rms_norm", lambda x, weight: rms_norm_reference(x, weight),
                  lambda x, weight: rms_norm_triton(x, weight)),
        ))
        cases.append(Case(
            "add_rms_norm", f"T={n_tok} H={h}",
            lambda h=h: {"x": rand(n_tok, h), "residual": rand(n_tok, h),
                         "weight": rand(h, scale=0.1, offset=1.0)},
            ["x", "residual", "weight"],
            impls("add_rms_norm",
                  lambda x, residual, weight: add_rms_norm_reference(x, residual, weight),
                  lambda x, residual, weight: add_rms_norm_triton(x, residual, weight)),
        ))
    for inter in inters:
        cases.append(Case(
            "swiglu", f"T={n_tok} I={inter}",
            lambda i=inter: {"gate": rand(n_tok, i), "up": rand(n_tok, i)},
            ["gate", "up"],
            impls("swiglu", lambda gate, up: swiglu_reference(gate, up),
                  lambda gate, up: swiglu_triton(gate, up)),
        ))
    for n_h, n_kv, d in heads:
        seq = min(n_tok, 4096)
        batch = n_tok // seq

        def rope_inputs(
            n_h: int = n_h, n_kv: int = n_kv, d: int = d, seq: int = seq, batch: int = batch
        ) -> dict[str, torch.Tensor]:
            inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev).float() / d))
            freqs = torch.arange(seq, device=dev).float()[:, None] * inv
            emb = torch.cat((freqs, freqs), dim=-1)[None]  # [1, T, D] as transformers passes it
            return {
                # q as the projection produces it: [B, T, H, D] viewed as [B, H, T, D]
                "q": rand(batch, seq, n_h, d).detach().transpose(1, 2).requires_grad_(),
                "k": rand(batch, seq, n_kv, d).detach().transpose(1, 2).requires_grad_(),
                "cos": emb.cos().to(dtype),
                "sin": emb.sin().to(dtype),
            }

        cases.append(Case(
            "rope", f"B={batch} T={seq} H={n_h}/{n_kv} D={d}", rope_inputs, ["q", "k"],
            impls("rope", lambda q, k, cos, sin: apply_rope_reference(q, k, cos, sin),
                  lambda q, k, cos, sin: apply_rope_triton(q, k, cos, sin)),
        ))
    return cases


def part_ops(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cases = ops_cases(bench, args.quick, dtype)
    print(f"{'kernel':<13}{'size':<30}{'eager':>12}{'compile':>12}{'ours':>12}{'liger':>12}"
          "   (ms, median fwd+bwd)")
    rows = []
    for case in cases:
        row = run_case(case, bench, repeat_ours=True)
        rows.append(row)
        cells = []
        for name in ("eager", "compile", "ours", "liger"):
            e = row.get(name)
            cells.append("-" if e is None else ("ERR" if "error" in e else f"{e['ms']:.4f}"))
        print(f"{case.kernel:<13}{case.size:<30}" + "".join(f"{c:>12}" for c in cells), flush=True)
        for name in ("eager", "compile", "ours", "liger"):
            if row.get(name, {}).get("error"):
                print(f"    {name}: {row[name]['error']}")
    targets: dict[str, Any] = {}
    for row in rows:
        ours, comp = row.get("ours", {}), row.get("compile", {})
        key = f"{row['kernel']} {row['size']}: compile_ms/ours_ms >= 1"
        if "ms" in ours and "ms" in comp:
            spread = abs(ours["ms"] - ours["ms_again"]) / min(ours["ms"], ours["ms_again"])
            ratio = comp["ms"] / min(ours["ms"], ours["ms_again"])
            entry = _target(ratio, 1.0)
            entry["timing_spread"] = _sig(spread)
            entry["within_noise"] = ratio >= 1.0 - spread
            targets[key] = entry
        else:
            targets[key] = {"met": False, "error": ours.get("error") or comp.get("error")}
    return {"rows": rows, "targets": targets}


# Llama-family LM heads: SmolLM2 (576 x 49,152), Llama-3.2-1B and Llama-3-8B (128,256 vocab).
FLCE_SHAPES = [(8192, 576, 49152), (8192, 2048, 128256), (16384, 4096, 128256)]


def part_flce(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from datadiet.kernels.flce import fused_linear_cross_entropy_triton

    dev = bench.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    liger = _liger()
    shapes = [(96, 40, 1000)] if bench.smoke else (FLCE_SHAPES[:1] if args.quick else FLCE_SHAPES)

    def eager(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # What transformers does: logits in the model dtype, upcast to fp32 for the loss.
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=-100)

    def ours(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fused_linear_cross_entropy_triton(hidden, weight, targets)

    rows, targets = [], {}
    print(f"{'size':<28}{'impl':<8}{'ms':>10}{'peak MiB':>12}")
    for n, h, v in shapes:

        def make(n: int = n, h: int = h, v: int = v) -> dict[str, torch.Tensor]:
            tgt = torch.randint(0, v, (n,), device=dev)
            tgt[: n // 10] = -100  # some masked (prompt/padding) positions
            hid = torch.randn(n, h, device=dev).to(dtype).requires_grad_()
            w = (torch.randn(v, h, device=dev) * h**-0.5).to(dtype).requires_grad_()
            return {"hidden": hid, "weight": w, "targets": tgt}

        impls = {"eager": eager, "ours": ours}
        if "flce" in liger:
            impls["liger"] = liger["flce"]
        size = f"N={n} H={h} V={v}"
        row = run_case(Case("flce", size, make, ["hidden", "weight"], impls), bench, False)
        rows.append(row)
        for name in impls:
            e = row.get(name, {})
            if "error" in e:
                print(f"{size:<28}{name:<8}  {e['error']}")
            else:
                peak = "-" if e["peak_mb"] is None else f"{e['peak_mb']:.1f}"
                print(f"{size:<28}{name:<8}{e['ms']:>10.3f}{peak:>12}", flush=True)
        e, o = row.get("eager", {}), row.get("ours", {})
        if e.get("peak_mb") and o.get("peak_mb"):
            row["memory_saving"] = e["peak_mb"] / o["peak_mb"]
            row["speedup_vs_eager"] = e["ms"] / o["ms"]
        if (n, h, v) == FLCE_SHAPES[0] or bench.smoke:
            targets[f"flce {size}: eager_peak/ours_peak >= 4"] = _target(
                row.get("memory_saving"), 4.0
            )
    sweep = _flce_chunk_sweep(bench, dtype, shapes[0])
    return {"rows": rows, "chunk_sweep": sweep, "targets": targets}


def _flce_chunk_sweep(
    bench: Bench, dtype: torch.dtype, shape: tuple[int, int, int]
) -> list[dict[str, Any]]:
    """Time and peak of our fused loss per chunk size, at the first shape and at the ``small``
    preset's head with the trainer's default batch (256 wide, 2K tokens): the data behind the
    chunk-size rule (memory rule floored at ``GPU_MIN_CHUNK_BYTES``)."""
    from datadiet.kernels import flce

    out = []
    problems = [shape] if bench.smoke else [shape, (2048, 256, 49152)]
    for n, h, v in problems:
        rows = [8, 32] if bench.smoke else [16, 64, 256, 1024, 4096]
        default = flce.chunk_rows(n, h, v, bench.device, torch.tensor([], dtype=dtype).element_size())
        for chunk in sorted({*rows, default}):
            if chunk > n:
                continue
            hid = torch.randn(n, h, device=bench.device).to(dtype).requires_grad_()
            w = (torch.randn(v, h, device=bench.device) * h**-0.5).to(dtype).requires_grad_()
            tgt = torch.randint(0, v, (n,), device=bench.device)

            def step(c: int = chunk, hid: torch.Tensor = hid, w: torch.Tensor = w,
                     tgt: torch.Tensor = tgt) -> None:
                hid.grad = w.grad = None
                flce.fused_linear_cross_entropy_triton(hid, w, tgt, chunk_size=c).backward()

            ms = bench.time_kernel_ms(step)
            peak = bench.peak_mb(step)
            out.append({"size": f"N={n} H={h} V={v}", "chunk": chunk, "default": chunk == default,
                        "ms": ms, "peak_mb": peak})
            print(f"  chunk sweep N={n} H={h} V={v} chunk={chunk:<5}{' (default)' if chunk == default else '          '}"
                  f" {ms:8.3f} ms  peak {peak if peak is None else round(peak, 1)} MiB", flush=True)
    return out


# --------------------------------------------------------------------------- model parts


def load_tokens(path: str | None, n_needed: int, vocab: int) -> tuple[np.ndarray, str]:
    """Real token ids from ``path`` (tiled if short), else Zipf-distributed synthetic ids."""
    if path and Path(path).exists():
        ids = np.load(path).astype(np.int64)
        ids = ids[ids < vocab]
        if len(ids) < n_needed:
            ids = np.tile(ids, math.ceil(n_needed / len(ids)))
        return ids[:n_needed], f"real text ({Path(path).name})"
    rng = np.random.default_rng(0)
    return (rng.zipf(1.3, n_needed) % vocab).astype(np.int64), "synthetic Zipf ids"


def hf_twin(model: Any) -> Any:
    """transformers' ``LlamaForCausalLM`` with exactly ``model``'s weights (SDPA attention)."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from datadiet.kernels.hf_checkpoint import hf_state_dict

    cfg = HFConfig(**model.config.to_hf_config(), attn_implementation="sdpa")
    dtype = model.embed.weight.dtype
    hf = LlamaForCausalLM(cfg).to(device=model.device, dtype=dtype)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weight mapping: missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings and hf.lm_head.weight is not hf.model.embed_tokens.weight:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    return hf


def _adamw(model: torch.nn.Module, lr: float, fused: bool) -> torch.optim.Optimizer:
    """The trainer's optimizer: AdamW, decay on matrices only, betas (0.9, 0.95)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused,
    )


def _autocast(bench: Bench, bf16: bool) -> Any:
    import contextlib

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=bench.device.type, dtype=torch.bfloat16)


def _train_step_fn(
    bench: Bench, model: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor], bf16: bool,
) -> Callable[[], None]:
    """One trainer step (autocast forward, backward, clip, AdamW), cycling through batches."""
    opt = _adamw(model, 1e-4, fused=bench.cuda)
    it = [0]

    def step() -> None:
        batch = batches[it[0] % len(batches)]
        it[0] += 1
        with _autocast(bench, bf16):
            loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def part_train(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from datadiet.kernels.model import LlamaConfig

    preset = "tiny" if bench.smoke else "small"
    cfg = LlamaConfig.preset(preset)
    # The trainer's defaults (batch 8 x 256), then a batch that fills the GPU better.
    shapes = [(2, 16)] if bench.smoke else [(8, 256), (16, 1024)]
    rows, targets = [], {}
    for batch, seq in shapes:
        row = _train_row(bench, args, preset, cfg, batch, seq)
        rows.append(row)
        print(
            f"{preset} preset B={batch} T={seq} ({row['precision']}): ours {row['ours_ms']:.2f} "
            f"ms, transformers {row['hf_ms']:.2f} ms -> {row['speedup_vs_hf']:.2f}x; losses at "
            f"init {row['loss_ours_fp32']:.5f} vs {row['loss_hf_fp32']:.5f}",
            flush=True,
        )
        targets[f"train step {preset} B={batch} T={seq}: hf_ms/ours_ms >= 1.2"] = _target(
            row["speedup_vs_hf"], 1.2
        )
        targets[f"train {preset} B={batch} T={seq}: fp32 loss matches transformers (rel 1e-4)"] = (
            _target(row["loss_rel_diff"], 1e-4, higher_is_better=False)
        )
        if bench.cuda:
            torch.cuda.empty_cache()
    # Liger patches transformers' Llama classes process-wide, so it comes after every plain run.
    if bench.cuda and _patch_llama_with_liger(rows):
        for row, (batch, seq) in zip(rows, shapes, strict=True):
            row.update(_hf_liger_row(bench, args, cfg, batch, seq))
            print(f"transformers + Liger B={batch} T={seq}: "
                  f"{row.get('hf_liger_ms', row.get('hf_liger_error'))} ms", flush=True)
    return {"rows": rows, "targets": targets}


def _train_row(
    bench: Bench, args: argparse.Namespace, preset: str, cfg: Any, batch: int, seq: int
) -> dict[str, Any]:
    """Time our training step and transformers' on the same weights and batches."""
    from datadiet.kernels.model import Llama

    dev = bench.device
    warmup, iters = (1, 2) if bench.smoke else (3, 15)
    n_batches = 4
    ids, source = load_tokens(args.tokens, n_batches * batch * (seq + 1), cfg.vocab_size)
    blocks = torch.from_numpy(ids).view(n_batches, batch, seq + 1).to(dev)
    torch.manual_seed(0)
    ours = Llama(cfg).to(dev).train()
    hf = hf_twin(ours).train()
    bf16 = bench.cuda  # what the trainer's dtype "auto" does
    row: dict[str, Any] = {"preset": preset, "batch": batch, "seq": seq, "data": source,
                           "precision": "bf16 autocast" if bf16 else "fp32"}

    # Same weights, same batch: the two losses must agree before their speeds compare. The
    # transformers model shifts labels itself, so it gets the whole block of seq + 1 tokens.
    with torch.no_grad():
        b0 = blocks[0]
        row["loss_ours_fp32"] = ours(b0[:, :-1], b0[:, 1:]).loss.item()
        row["loss_hf_fp32"] = hf(input_ids=b0, labels=b0).loss.item()
    row["loss_rel_diff"] = abs(row["loss_ours_fp32"] - row["loss_hf_fp32"]) / row["loss_hf_fp32"]

    def ours_loss(b: torch.Tensor) -> torch.Tensor:
        return ours(b[:, :-1], b[:, 1:]).loss

    def hf_loss(b: torch.Tensor) -> torch.Tensor:
        return hf(input_ids=b, labels=b).loss

    for name, model, loss_of in (("ours", ours, ours_loss), ("hf", hf, hf_loss)):
        step = _train_step_fn(bench, model, loss_of, list(blocks), bf16)
        row[f"{name}_ms"] = bench.time_ms(step, warmup, iters)
        row[f"{name}_peak_mb"] = bench.peak_mb(step)
    tokens = batch * seq
    row["ours_tokens_per_s"] = tokens / (row["ours_ms"] / 1e3)
    row["hf_tokens_per_s"] = tokens / (row["hf_ms"] / 1e3)
    row["speedup_vs_hf"] = row["hf_ms"] / row["ours_ms"]
    return row


def _patch_llama_with_liger(rows: list[dict[str, Any]]) -> bool:
    """Apply Liger-Kernel's published recipe to transformers' Llama (False if unavailable)."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama()
        return True
    except Exception as exc:
        for row in rows:
            row["hf_liger_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return False


def _hf_liger_row(
    bench: Bench, args: argparse.Namespace, cfg: Any, batch: int, seq: int
) -> dict[str, Any]:
    """The same step on transformers' Llama patched by Liger, for reference."""
    from datadiet.kernels.model import Llama

    warmup, iters = (1, 2) if bench.smoke else (3, 15)
    ids, _ = load_tokens(args.tokens, 4 * batch * (seq + 1), cfg.vocab_size)
    blocks = torch.from_numpy(ids).view(4, batch, seq + 1).to(bench.device)
    try:
        torch.manual_seed(0)
        hf = hf_twin(Llama(cfg).to(bench.device)).train()
        step = _train_step_fn(bench, hf, lambda b: hf(input_ids=b, labels=b).loss, list(blocks),
                              bench.cuda)
        return {"hf_liger_ms": bench.time_ms(step, warmup, iters)}
    except Exception as exc:
        return {"hf_liger_error": f"{type(exc).__name__}: {exc}"[:200]}


class _IdsOnlyTokenizer:
    """The Generator takes token ids here; it only asks the tokenizer for ids and decoding."""

    pad_token_id = 0
    eos_token_id = None

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def part_generate(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from datadiet.kernels import ops
    from datadiet.kernels.model import Llama, LlamaConfig
    from datadiet.pipeline.stages.inference import Generator

    dev = bench.device
    preset = "tiny" if bench.smoke else "smollm2-135m"
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    cfg = LlamaConfig.preset(preset)
    prompt_len, new_tokens = (8, 4) if bench.smoke else (128, 128)
    batches = [1, 2] if bench.smoke else [1, 8]
    runs = 1 if bench.smoke else 3
    torch.manual_seed(0)
    model = Llama(cfg).to(dev, dtype).eval()
    hf = hf_twin(model).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    gen = Generator(model, tokenizer=_IdsOnlyTokenizer(), device=dev, batch_size=max(batches),
                    pack=False)
    ids, source = load_tokens(args.tokens, max(batches) * prompt_len, cfg.vocab_size)
    prompts = torch.from_numpy(ids).view(max(batches), prompt_len)

    rows, targets = [], {}
    for b in batches:
        p = prompts[:b]

        def ours(p: torch.Tensor = p) -> list[list[int]]:
            out = gen.generate(p.tolist(), max_new_tokens=new_tokens, stop_token_ids=[])
            return [g.token_ids for g in out]

        def theirs(p: torch.Tensor = p) -> list[list[int]]:
            x = p.to(dev)
            with torch.inference_mode():
                out = hf.generate(
                    input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                    do_sample=False,
                )
            return out[:, prompt_len:].tolist()

        def timed(fn: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
            fn()  # warm-up: kernel compilation, allocator, cuBLAS handles
            times, out = [], []
            for _ in range(runs):
                bench.sync()
                t0 = time.perf_counter()
                out = fn()
                bench.sync()
                times.append(time.perf_counter() - t0)
            return statistics.median(times), out

        t_ours, tok_ours = timed(ours)
        t_hf, tok_hf = timed(theirs)
        with ops.use_backend("torch"):  # the same loop on the PyTorch references
            t_ours_torch, _ = timed(ours)
        agree = []
        for a, c in zip(tok_ours, tok_hf, strict=True):
            same = next((i for i, (x, y) in enumerate(zip(a, c, strict=False)) if x != y), len(a))
            agree.append(same)
        row = {
            "preset": preset, "dtype": str(dtype).removeprefix("torch."), "batch": b,
            "prompt_len": prompt_len, "new_tokens": new_tokens, "prompts": source,
            "ours_s": t_ours, "hf_s": t_hf,
            "ours_tokens_per_s": b * new_tokens / t_ours, "hf_tokens_per_s": b * new_tokens / t_hf,
            "speedup_vs_hf": t_hf / t_ours,
            "ours_torch_backend_s": t_ours_torch,
            "lengths_ok": all(len(t) == new_tokens for t in tok_ours + tok_hf),
            "greedy_common_prefix_mean": statistics.mean(agree),
        }
        rows.append(row)
        print(
            f"greedy {preset} {row['dtype']} batch {b}, {prompt_len}+{new_tokens} tokens: ours "
            f"{t_ours:.3f} s ({row['ours_tokens_per_s']:.0f} tok/s), transformers {t_hf:.3f} s "
            f"({row['hf_tokens_per_s']:.0f} tok/s) -> {row['speedup_vs_hf']:.2f}x; same greedy "
            f"tokens for the first {row['greedy_common_prefix_mean']:.1f} of {new_tokens} on average;"
            f" ours on the torch backend {t_ours_torch:.3f} s",
            flush=True,
        )
        targets[f"generate batch {b}: hf_s/ours_s >= 1.5"] = _target(row["speedup_vs_hf"], 1.5)
    overheads = _decode_op_overheads(bench, cfg, dtype)
    return {"rows": rows, "decode_op_us": overheads, "targets": targets}


def _decode_op_overheads(bench: Bench, cfg: Any, dtype: torch.dtype) -> dict[str, Any]:
    """Microseconds per call of each op at one decoding token (batch 1), Triton vs reference:
    at this size every op is launch-bound, so this is what decides decoding speed."""
    from datadiet.kernels import ops

    dev, d, hd = bench.device, cfg.d_model, cfg.d_head
    x = torch.randn(1, 1, d, device=dev, dtype=dtype)
    r = torch.randn(1, 1, d, device=dev, dtype=dtype)
    w = torch.ones(d, device=dev, dtype=dtype)
    g = torch.randn(1, 1, cfg.d_ff, device=dev, dtype=dtype)
    q = torch.randn(1, cfg.n_heads, 1, hd, device=dev, dtype=dtype)
    k = torch.randn(1, cfg.n_kv_heads, 1, hd, device=dev, dtype=dtype)
    cos, sin = torch.randn(1, hd, device=dev), torch.randn(1, hd, device=dev)
    calls = {
        "rms_norm": lambda: ops.rms_norm(x, w),
        "add_rms_norm": lambda: ops.add_rms_norm(x, r, w),
        "swiglu": lambda: ops.swiglu(g, g),
        "apply_rope": lambda: ops.apply_rope(q, k, cos, sin),
    }
    n = 20 if bench.smoke else 2000
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for backend in ("triton", "torch"):
            with ops.use_backend(backend):
                for name, fn in calls.items():
                    def many(fn: Callable[[], Any] = fn) -> None:
                        for _ in range(n):
                            fn()
                    out[f"{name} {backend}"] = bench.time_ms(many, warmup=1, iters=3) * 1e3 / n
    print("per-call microseconds at one decoding token: "
          + ", ".join(f"{k} {v:.1f}" for k, v in out.items()))
    return out


def part_bf16(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Same init, same batches, same schedule: fp32 vs bf16 autocast, loss after 50 steps."""
    from datadiet.kernels.model import Llama, LlamaConfig

    dev = bench.device
    preset = "tiny" if bench.smoke else "small"
    cfg = LlamaConfig.preset(preset)
    steps = 3 if bench.smoke else 50
    batch, seq = (2, 16) if bench.smoke else (8, 256)
    n_eval = 2 if bench.smoke else 16
    ids, source = load_tokens(args.tokens, (steps * batch + n_eval) * (seq + 1), cfg.vocab_size)
    blocks = torch.from_numpy(ids).view(-1, seq + 1).to(dev)
    train_blocks, eval_blocks = blocks[: steps * batch], blocks[steps * batch :]
    warmup_steps, lr, min_ratio = max(1, steps // 5), 1e-3, 0.1

    def lr_at(step: int) -> float:  # the trainer's shape: linear warm-up, cosine to 10%
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def run(bf16: bool) -> dict[str, Any]:
        torch.manual_seed(0)
        model = Llama(cfg).to(dev).train()
        opt = _adamw(model, lr, fused=bench.cuda)
        losses = []
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            b = train_blocks[step * batch : (step + 1) * batch]
            with _autocast(bench, bf16):
                loss = model(b[:, :-1], b[:, 1:]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        with torch.no_grad():  # held-out loss, evaluated in fp32 for both runs
            ev = model(eval_blocks[:, :-1], eval_blocks[:, 1:]).loss.item()
        return {"losses": losses, "eval_loss": ev}

    fp32, bf16 = run(False), run(True)
    rel_step = abs(bf16["losses"][-1] - fp32["losses"][-1]) / fp32["losses"][-1]
    rel_eval = abs(bf16["eval_loss"] - fp32["eval_loss"]) / fp32["eval_loss"]
    every = max(1, steps // 5)
    for name, r in (("fp32", fp32), ("bf16", bf16)):
        curve = ", ".join(f"{i + 1}:{r['losses'][i]:.4f}" for i in range(every - 1, steps, every))
        print(f"{name}: train loss {curve}; held-out loss {r['eval_loss']:.4f}")
    print(f"bf16 vs fp32 after {steps} steps: train loss {rel_step:.3%}, held-out {rel_eval:.3%}")
    return {
        "rows": [{"preset": preset, "steps": steps, "batch": batch, "seq": seq, "data": source,
                  "fp32": fp32, "bf16": bf16, "rel_diff_train_loss": rel_step,
                  "rel_diff_eval_loss": rel_eval}],
        "targets": {
            f"bf16 autocast vs fp32, train loss at step {steps}: rel diff <= 1%": _target(
                rel_step, 0.01, higher_is_better=False
            ),
            f"bf16 autocast vs fp32, held-out loss after {steps} steps: rel diff <= 1%": _target(
                rel_eval, 0.01, higher_is_better=False
            ),
        },
    }


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all",
                        help="one part, or all of them in this process (default)")
    parser.add_argument("--quick", action="store_true", help="the first size of each case only")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the available device (CPU: Triton interpreter)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                        help="dtype of the ops/flce parts")
    parser.add_argument("--tokens", help=".npy of token ids for the model parts")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available() and not args.smoke:
        print("kernels_gpu: no CUDA device found; nothing to benchmark.")
        print(json.dumps({"part": args.part, "skipped": "no CUDA device"}))
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("kernels_gpu: triton is not installed (pip install 'datadiet[kernels]').")
        print(json.dumps({"part": args.part, "skipped": "triton not installed"}))
        return 0
    bench = Bench(torch.device("cuda" if torch.cuda.is_available() else "cpu"), args.smoke)
    name = torch.cuda.get_device_name() if bench.cuda else "cpu"
    print(f"part {args.part} on {name}{' (smoke: tiny shapes, figures mean nothing)' if args.smoke else ''}")
    runners = {"ops": part_ops, "flce": part_flce, "train": part_train,
               "generate": part_generate, "bf16": part_bf16}
    results = {}
    for part in PARTS if args.part == "all" else [args.part]:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        result = runners[part](bench, args)
        results[part] = {"part": part, "device": name, "smoke": args.smoke,
                         "seconds": round(time.perf_counter() - t0, 1), **result}
    if args.part != "all":
        print(json.dumps(results[args.part], default=_json_default))
    else:
        targets = {k: v for r in results.values() for k, v in r["targets"].items()}
        print(json.dumps({"parts": results, "targets": targets}, default=_json_default))
    return 0


def _json_default(x: Any) -> Any:
    if isinstance(x, float | np.floating):
        return _sig(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
