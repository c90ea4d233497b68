"""GPU benchmark of the fused kernels against eager PyTorch (and Liger-Kernel when importable).

For every kernel and size it measures forward+backward time (CUDA events around each
iteration after a warmup, median of the iterations) and the peak memory the step allocates
above its inputs (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``). Each
candidate's output is checked against eager first, so a mis-wired comparison is reported as
such instead of timed.

Usage::

    python benchmarks/kernels_gpu.py                 # all kernels, all sizes
    python benchmarks/kernels_gpu.py --quick         # smallest sizes only
    python benchmarks/kernels_gpu.py --kernels flce rms_norm --iters 50

Prints a table, then as the LAST line a JSON object keyed by kernel: geometric-mean speedup
(eager time / ours) and memory ratio (our peak / eager peak) over the sizes, plus per-size rows.
Without a CUDA device it says so and prints ``{"skipped": "no CUDA device"}`` (exit code 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Timing the numpy interpreter would be meaningless; must be cleared before triton is imported.
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

Tensors = tuple[torch.Tensor, ...]


@dataclass
class Case:
    """One benchmark problem: inputs factory, the tensors whose grads are taken, and impls."""

    kernel: str
    size: str
    make_inputs: Callable[[], dict[str, torch.Tensor]]
    grad_inputs: Sequence[str]
    impls: dict[str, Callable[..., Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------- measurement


def _outputs(result: Any) -> Tensors:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _step(fn: Callable[..., Any], inputs: dict[str, torch.Tensor], grads: Sequence[str]) -> Tensors:
    """Forward + backward with fixed upstream gradients (ones), grads cleared beforehand."""
    for name in grads:
        inputs[name].grad = None
    outs = _outputs(fn(**inputs))
    torch.autograd.backward(list(outs), [torch.ones_like(o) for o in outs])
    return outs


def _time_ms(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_bytes(fn: Callable[[], Any]) -> int:
    """Bytes allocated by one step above what was live before it (inputs, grads of inputs)."""
    fn()  # first call allocates persistent .grad tensors; measure steady state
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _check(got: Tensors, want: Tensors) -> str | None:
    """None if every tensor matches eager to 3% of its largest magnitude, else a reason.

    Scale-relative because the tensors differ by orders of magnitude (a loss of ~11, weight
    gradients of ~1e-6), and 3% is loose enough for bf16 rounding-order differences yet
    catches wiring errors (wrong argument order, missing scale, transposed layout).
    """
    if len(got) != len(want):
        return f"returned {len(got)} tensors, eager {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            return f"tensor {i}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        err = (g.float() - w.float()).abs().max().item()
        ref = w.float().abs().max().item()
        if not err <= 3e-2 * max(ref, 1e-30):
            return f"tensor {i}: max abs diff {err:.3g} vs max |eager| {ref:.3g}"
    return None


def run_case(case: Case, warmup: int, iters: int) -> dict[str, Any]:
    """Measure every implementation of one case; eager first (it is the baseline)."""
    row: dict[str, Any] = {"kernel": case.kernel, "size": case.size}
    inputs = case.make_inputs()
    eager_out: Tensors | None = None
    eager_grads: tuple[torch.Tensor | None, ...] = ()
    for name, fn in case.impls.items():
        try:
            out = tuple(o.detach() for o in _step(fn, inputs, case.grad_inputs))
            # Outputs and input gradients (an adapter that keeps its own parameter, like
            # Liger's RMSNorm module, leaves that input's .grad empty: not compared).
            grads = tuple(inputs[g].grad for g in case.grad_inputs)
            if name == "eager":
                eager_out = out + tuple(g for g in grads if g is not None)
                eager_grads = grads
            elif eager_out is not None:
                pairs = [
                    (g, e)
                    for g, e in zip(grads, eager_grads, strict=True)
                    if g is not None and e is not None
                ]
                problem = _check(
                    out + tuple(g for g, _ in pairs),
                    eager_out[: len(out)] + tuple(e for _, e in pairs),
                )
                if problem:
                    row[name] = {"error": f"mismatch vs eager: {problem}"}
                    continue
            del out, grads

            def step(fn: Callable[..., Any] = fn) -> None:
                _step(fn, inputs, case.grad_inputs)

            row[name] = {"ms": _time_ms(step, warmup, iters), "peak_mb": _peak_bytes(step) / 2**20}
        except torch.cuda.OutOfMemoryError:
            row[name] = {"error": "out of memory"}
        except Exception as exc:  # a broken third-party adapter must not end the run
            row[name] = {"error": f"{type(exc).__name__}: {exc}"[:160]}
        finally:
            for g in case.grad_inputs:
                if name != "eager":
                    inputs[g].grad = None
            torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- problems


def _liger() -> dict[str, Callable[..., Any]]:
    """Liger-Kernel adapters for the kernels it offers (empty if not installed)."""
    adapters: dict[str, Callable[..., Any]] = {}
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return adapters
    try:
        from liger_kernel.transformers import LigerRMSNorm

        modules: dict[tuple[int, str, torch.dtype], Any] = {}

        def liger_rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            key = (weight.shape[0], str(weight.device), weight.dtype)
            if key not in modules:
                modules[key] = LigerRMSNorm(weight.shape[0], eps=1e-6).to(
                    weight.device, weight.dtype
                )
            mod = modules[key]
            mod.weight = torch.nn.Parameter(weight, requires_grad=weight.requires_grad)
            return mod(x)

        adapters["rms_norm"] = liger_rms
    except Exception:
        pass
    try:
        from liger_kernel.transformers import liger_rotary_pos_emb

        def liger_rope(
            q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return liger_rotary_pos_emb(q, k, cos, sin)

        adapters["rope"] = liger_rope
    except Exception:
        pass
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        adapters["swiglu"] = LigerSiLUMulFunction.apply
    except Exception:
        pass
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss_mod = LigerFusedLinearCrossEntropyLoss()

        def liger_flce(
            hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
        ) -> torch.Tensor:
            return loss_mod(weight, hidden, targets)

        adapters["flce"] = liger_flce
    except Exception:
        pass
    return adapters


# Llama-family shapes: SmolLM2-135M (576), Llama-3.2-1B (2048), Llama-3-8B (4096).
MODEL_SHAPES = {
    576: {"inter": 1536, "heads": 9, "kv": 3, "head_dim": 64},
    2048: {"inter": 8192, "heads": 32, "kv": 8, "head_dim": 64},
    4096: {"inter": 14336, "heads": 32, "kv": 8, "head_dim": 128},
}
FLCE_SHAPES = [(576, 49152), (2048, 128256), (4096, 128256)]


def build_cases(
    kernels: Sequence[str],
    quick: bool,
    dtype: torch.dtype,
    device: str = "cuda",
    tokens: Sequence[int] | None = None,
) -> list[Case]:
    """Problems to run; ``device``/``tokens`` exist so the harness can be smoke-tested off-GPU."""
    from datadiet.kernels.flce import fused_linear_cross_entropy_triton
    from datadiet.kernels.rmsnorm import (
        add_rms_norm_reference,
        add_rms_norm_triton,
        rms_norm_reference,
        rms_norm_triton,
    )
    from datadiet.kernels.rope import apply_rope_reference, apply_rope_triton
    from datadiet.kernels.swiglu import swiglu_reference, swiglu_triton

    dev = torch.device(device)
    liger = _liger()
    tokens_list = list(tokens) if tokens else ([4096] if quick else [4096, 16384])
    hiddens = [576] if quick else [576, 2048, 4096]
    flce_shapes = FLCE_SHAPES[:1] if quick else FLCE_SHAPES
    cases: list[Case] = []

    def rand(
        *shape: int, grad: bool = True, scale: float = 1.0, offset: float = 0.0
    ) -> torch.Tensor:
        """A leaf tensor (so .grad is populated) in the benchmark dtype."""
        t = torch.randn(*shape, device=dev, dtype=torch.float32) * scale + offset
        return t.to(dtype).requires_grad_(grad)

    def with_liger(
        kernel: str, impls: dict[str, Callable[..., Any]]
    ) -> dict[str, Callable[..., Any]]:
        if kernel in liger:
            impls["liger"] = liger[kernel]
        return impls

    for n_tok in tokens_list:
        for hid in hiddens:
            shp = MODEL_SHAPES[hid]
            size = f"T={n_tok} H={hid}"
            if "rms_norm" in kernels:
                cases.append(
                    Case(
                        "rms_norm",
                        size,
                        lambda n=n_tok, h=hid: {
                            "x": rand(n, h),
                            "weight": rand(h, scale=0.1, offset=1.0),
                        },
                        ["x", "weight"],
                        with_liger(
                            "rms_norm",
                            {
                                "eager": lambda x, weight: rms_norm_reference(x, weight),
                                "ours": lambda x, weight: rms_norm_triton(x, weight),
                            },
                        ),
                    )
                )
            if "add_rms_norm" in kernels:
                cases.append(
                    Case(
                        "add_rms_norm",
                        size,
                        lambda n=n_tok, h=hid: {
                            "x": rand(n, h),
                            "residual": rand(n, h),
                            "weight": rand(h, scale=0.1, offset=1.0),
                        },
                        ["x", "residual", "weight"],
                        {
                            "eager": lambda x, residual, weight: add_rms_norm_reference(
                                x, residual, weight
                            ),
                            "ours": lambda x, residual, weight: add_rms_norm_triton(
                                x, residual, weight
                            ),
                        },
                    )
                )
            if "swiglu" in kernels:
                cases.append(
                    Case(
                        "swiglu",
                        f"T={n_tok} I={shp['inter']}",
                        lambda n=n_tok, i=shp["inter"]: {"gate": rand(n, i), "up": rand(n, i)},
                        ["gate", "up"],
                        with_liger(
                            "swiglu",
                            {
                                "eager": lambda gate, up: swiglu_reference(gate, up),
                                "ours": lambda gate, up: swiglu_triton(gate, up),
                            },
                        ),
                    )
                )
            if "rope" in kernels:
                seq = min(n_tok, 4096)
                batch = n_tok // seq

                def rope_inputs(
                    b: int = batch, t: int = seq, s: dict[str, int] = shp
                ) -> dict[str, torch.Tensor]:
                    d = s["head_dim"]
                    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev).float() / d))
                    freqs = torch.arange(t, device=dev).float()[:, None] * inv
                    emb = torch.cat((freqs, freqs), dim=-1)[None]  # [1, T, D] as HF passes it
                    return {
                        # q as the projection produces it: [B, T, H, D] viewed as [B, H, T, D]
                        "q": rand(b, t, s["heads"], d).detach().transpose(1, 2).requires_grad_(),
                        "k": rand(b, t, s["kv"], d).detach().transpose(1, 2).requires_grad_(),
                        "cos": emb.cos().to(dtype),
                        "sin": emb.sin().to(dtype),
                    }

                cases.append(
                    Case(
                        "rope",
                        f"B={batch} T={seq} H={shp['heads']}/{shp['kv']} D={shp['head_dim']}",
                        rope_inputs,
                        ["q", "k"],
                        with_liger(
                            "rope",
                            {
                                "eager": lambda q, k, cos, sin: apply_rope_reference(
                                    q, k, cos, sin
                                ),
                                "ours": lambda q, k, cos, sin: apply_rope_triton(q, k, cos, sin),
                            },
                        ),
                    )
                )
        if "flce" in kernels:
            for hid, vocab in flce_shapes:

                def flce_inputs(
                    n: int = n_tok, h: int = hid, v: int = vocab
                ) -> dict[str, torch.Tensor]:
                    targets = torch.randint(0, v, (n,), device=dev)
                    targets[: n // 10] = -100  # some masked (prompt/padding) positions
                    return {
                        "hidden": rand(n, h),
                        "weight": rand(v, h, scale=h**-0.5),
                        "targets": targets,
                    }

                def eager_flce(
                    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                ) -> torch.Tensor:
                    # The usual HF path: bf16 logits, upcast to fp32 for the loss.
                    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)

                cases.append(
                    Case(
                        "flce",
                        f"T={n_tok} H={hid} V={vocab}",
                        flce_inputs,
                        ["hidden", "weight"],
                        with_liger(
                            "flce",
                            {
                                "eager": eager_flce,
                                "ours": lambda hidden, weight, targets: (
                                    fused_linear_cross_entropy_triton(hidden, weight, targets)
                                ),
                            },
                        ),
                    )
                )
    return cases


# --------------------------------------------------------------------------- report


def _fmt(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    if "error" in entry:
        return entry["error"][:38]
    return f"{entry['ms']:8.3f} ms {entry['peak_mb']:9.1f} MB"


def _geomean(values: list[float]) -> float | None:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _sig(x: float, digits: int = 4) -> float:
    """Round to significant digits (ratios span 0.001x..100x; fixed decimals would zero them)."""
    return float(f"{x:.{digits}g}")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows:
        k = out.setdefault(row["kernel"], {"cases": []})
        eager, ours, liger = row.get("eager"), row.get("ours"), row.get("liger")
        entry: dict[str, Any] = {"size": row["size"]}
        if eager and ours and "ms" in eager and "ms" in ours:
            entry["speedup_vs_eager"] = _sig(eager["ms"] / ours["ms"])
            entry["memory_ratio_vs_eager"] = _sig(ours["peak_mb"] / max(eager["peak_mb"], 1e-9))
            entry["ours_ms"] = _sig(ours["ms"])
            entry["eager_ms"] = _sig(eager["ms"])
            entry["ours_peak_mb"] = _sig(ours["peak_mb"])
            entry["eager_peak_mb"] = _sig(eager["peak_mb"])
        else:
            entry["error"] = (ours or {}).get("error") or (eager or {}).get("error") or "missing"
        if liger and "ms" in liger and ours and "ms" in ours:
            entry["speedup_vs_liger"] = _sig(liger["ms"] / ours["ms"])
            entry["memory_ratio_vs_liger"] = _sig(ours["peak_mb"] / max(liger["peak_mb"], 1e-9))
        elif liger and "error" in liger:
            entry["liger_error"] = liger["error"]
        k["cases"].append(entry)
    for k in out.values():
        for key in (
            "speedup_vs_eager",
            "memory_ratio_vs_eager",
            "speedup_vs_liger",
            "memory_ratio_vs_liger",
        ):
            g = _geomean([c[key] for c in k["cases"] if key in c])
            if g is not None:
                k[key] = _sig(g)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    all_kernels = ["rms_norm", "add_rms_norm", "rope", "swiglu", "flce"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", choices=all_kernels, default=all_kernels)
    parser.add_argument("--quick", action="store_true", help="smallest size per kernel only")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("kernels_gpu: no CUDA device found; nothing to benchmark.")
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("kernels_gpu: triton is not installed (pip install 'datadiet[kernels]').")
        print(json.dumps({"skipped": "triton not installed"}))
        return 0

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    cases = build_cases(args.kernels, args.quick, dtype)
    print(
        f"device: {torch.cuda.get_device_name()}  dtype: {args.dtype}  "
        f"warmup={args.warmup} iters={args.iters} (median fwd+bwd; peak = extra allocation)"
    )
    header = f"{'kernel':<13}{'size':<34}{'eager':>28}{'ours':>28}{'liger':>28}"
    print(header)
    print("-" * len(header))
    rows = []
    for case in cases:
        row = run_case(case, args.warmup, args.iters)
        rows.append(row)
        print(
            f"{case.kernel:<13}{case.size:<34}{_fmt(row.get('eager')):>28}"
            f"{_fmt(row.get('ours')):>28}{_fmt(row.get('liger')):>28}",
            flush=True,
        )
    print(json.dumps(summarise(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
