"""The Triton kernels compile for Hopper (sm_90) with Triton's own ptxas, on any machine.

The other kernel tests run the kernels through Triton's interpreter here, which accepts code the
real compiler rejects and says nothing about registers. This compiles the bf16 launch
configurations the launchers pick for model-sized shapes and checks what would otherwise only
show on a GPU: the compile succeeds, nothing spills to local memory, and each program's
registers fit an SM (65,536 per SM; a launch asking for more fails outright).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills() -> None:
    from triton.backends.nvidia import compiler  # noqa: F401  (the CUDA backend must ship)

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    # A fresh process: this one imported triton with the interpreter on (see conftest.py).
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "datadiet.kernels.aot_check", "--only", "bf16"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {r["name"].split()[0] for r in results}
    assert names == {"rms_norm_fwd", "rms_norm_bwd", "rope", "swiglu_fwd", "swiglu_bwd",
                     "cross_entropy"}
    for r in results:
        assert r["error"] is None, f"{r['name']}: {r['error']}"
        assert r["usage"]["LOCAL"] == 0, f"{r['name']} spills: {r['usage']}"
        assert r["usage"]["REG"] * 32 * r["num_warps"] <= 65536, f"{r['name']}: {r['usage']}"
    assert proc.returncode == 0
