"""Compile every Triton kernel for a GPU that is not here, and read its resource usage.

Why: the kernels run under Triton's interpreter on machines without a GPU, which accepts code
the real compiler rejects (an unsupported construct, a loop-carried value changing type) and
says nothing about registers. Triton ships its own ``ptxas`` and ``cuobjdump``, so the real
compiler can run on any machine: this module compiles each kernel at the launch configurations
its launcher picks for model-sized shapes, for every dtype, targeting Hopper (sm_90, the
H100/H200) by default, and reports registers, stack and spills (``LOCAL``) per kernel.

Run ``python -m datadiet.kernels.aot_check`` (prints a table, then a JSON list). It must run in
a process where ``triton`` was imported *without* ``TRITON_INTERPRET=1``: the interpreter
replaces Triton's own ``tl.sum``/``tl.max`` helpers with objects the compiler cannot use.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datadiet.kernels import flce, rmsnorm, rope, swiglu
from datadiet.kernels._triton_utils import LazyKernel, next_power_of_2, row_tile

DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass
class AotCase:
    """One kernel at one launch configuration: argument types, constexprs and warps."""

    name: str
    kernel: LazyKernel
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _sig(names: str, kind: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


def cases() -> list[AotCase]:
    """The launch configurations of model-sized shapes (SmolLM2 and Llama-3-8B widths)."""
    out: list[AotCase] = []
    for dt in DTYPES.values():
        ptr = f"*{dt}"
        for width in (576, 4096):
            block, block_r, warps = row_tile(width)
            for residual in (False, True):
                sig = _sig("X R W Y S", ptr) | {"RSTD": "*fp32"}
                sig |= _sig("stride_x stride_r stride_y stride_s n_rows n_cols", "i32")
                sig |= {"eps": "fp32"} | _sig("HAS_RESIDUAL BLOCK BLOCK_R", "constexpr")
                out.append(AotCase(
                    f"rms_norm_fwd {dt} H={width} residual={residual}",
                    rmsnorm._rms_norm_fwd_kernel, sig,
                    {"HAS_RESIDUAL": residual, "BLOCK": block, "BLOCK_R": block_r}, warps,
                ))
                bwd_block, bwd_block_r, bwd_warps = rmsnorm.backward_tile(width)
                sig = _sig("DY DS X W", ptr) | {"RSTD": "*fp32"} | _sig("DX DR", ptr)
                sig |= {"DW_PARTIAL": "*fp32"}
                sig |= _sig("stride_dy stride_ds stride_x stride_dx stride_dr n_rows n_cols "
                            "rows_per_program", "i32")
                sig |= _sig("HAS_DS HAS_DR BLOCK BLOCK_R", "constexpr")
                out.append(AotCase(
                    f"rms_norm_bwd {dt} H={width} residual={residual}",
                    rmsnorm._rms_norm_bwd_kernel, sig,
                    {"HAS_DS": residual, "HAS_DR": residual, "BLOCK": bwd_block,
                     "BLOCK_R": bwd_block_r},
                    bwd_warps,
                ))
        for n_qh, n_kh, head_dim in ((9, 3, 64), (32, 8, 128)):
            block_qh, block_kh, block_d, warps = rope.launch_params(n_qh, n_kh, head_dim)
            sig = _sig("Q K", ptr) | _sig("COS SIN", "*fp32") | _sig("QO KO", ptr)
            sig |= _sig("q_sb q_sh q_st k_sb k_sh k_st qo_sb qo_sh qo_st ko_sb ko_sh ko_st c_sb "
                        "c_st n_t n_qh n_kh head_dim half", "i32")
            sig |= _sig("BACKWARD BLOCK_QH BLOCK_KH BLOCK_D", "constexpr")
            for backward in (False, True):
                out.append(AotCase(
                    f"rope {'bwd' if backward else 'fwd'} {dt} H={n_qh}/{n_kh} D={head_dim}",
                    rope._rope_kernel, sig,
                    {"BACKWARD": backward, "BLOCK_QH": block_qh, "BLOCK_KH": block_kh,
                     "BLOCK_D": block_d}, warps,
                ))
        for inter in (1536, 14336):
            block = swiglu._block(inter)
            sig = _sig("G U Y", ptr) | _sig("stride_g stride_u stride_y n_cols", "i32")
            out.append(AotCase(f"swiglu_fwd {dt} I={inter}", swiglu._swiglu_fwd_kernel,
                               sig | {"BLOCK": "constexpr"}, {"BLOCK": block}, 4))
            sig = _sig("DY G U DG DU", ptr)
            sig |= _sig("stride_dy stride_g stride_u stride_dg stride_du n_cols", "i32")
            out.append(AotCase(f"swiglu_bwd {dt} I={inter}", swiglu._swiglu_bwd_kernel,
                               sig | {"BLOCK": "constexpr"}, {"BLOCK": block}, 4))
        for vocab in (49152, 128256, 301):
            block, warps = flce.launch_params(vocab)
            sig = {"LOGITS": ptr, "stride_row": "i32", "TARGETS": "*i64", "LOSS": "*fp32",
                   "n_cols": "i32", "ignore_index": "i32", "scale": "fp32", "BLOCK": "constexpr"}
            out.append(AotCase(f"cross_entropy {dt} V={vocab}", flce._ce_fwd_bwd_kernel, sig,
                               {"BLOCK": block}, warps))
    assert all(next_power_of_2(v) == v for c in out for k, v in c.constexprs.items()
               if k.startswith("BLOCK"))
    return out


def _tool(name: str) -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def compile_case(case: AotCase, arch: int) -> AotCase:
    """Compile ``case`` for ``sm_<arch>`` and fill in ``usage`` (or ``error``)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    case.kernel.fn.__globals__["tl"] = tl
    fn = triton.jit(case.kernel.fn)
    try:
        src = ASTSource(fn=fn, signature=case.signature, constexprs=case.constexprs)
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": case.num_warps}
        )
    except Exception as exc:  # reported per case: one broken kernel must not hide the others
        case.error = f"{type(exc).__name__}: {exc}"[:400]
        return case
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        text = subprocess.run(
            [str(_tool("cuobjdump")), "--dump-resource-usage", str(cubin)],
            capture_output=True, text=True, check=True,
        ).stdout
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        found = re.search(rf"\b{key}:(\d+)", text)
        if found:
            case.usage[key] = int(found.group(1))
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper)")
    parser.add_argument("--only", help="substring of the case names to compile")
    args = parser.parse_args(argv)
    from datadiet.kernels._triton_utils import interpreter_enabled

    if interpreter_enabled():
        print("aot_check: unset TRITON_INTERPRET; the interpreter cannot compile", file=sys.stderr)
        return 2
    results = []
    for case in cases():
        if args.only and args.only not in case.name:
            continue
        compile_case(case, args.arch)
        usage = " ".join(f"{k}:{v}" for k, v in case.usage.items())
        print(f"{case.name:<44} warps={case.num_warps:<3} {case.error or usage}", flush=True)
        row = asdict(case)
        row.pop("kernel")
        results.append(row)
    print(json.dumps(results))
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
