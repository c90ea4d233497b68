"""One GPU session for issue 15: the kernel tests on CUDA, then every part of kernels_gpu.py.

Device time is short, so this is the single script a lent GPU runs. Each step runs in its own
process with its own time limit (a hung compile or a CUDA fault in one part cannot take the
others down) and all of them share one overall deadline. Everything lands in ``--out``:

* ``session.log``: the full output of every step, in order;
* ``tests.xml``: JUnit report of ``pytest tests/kernels``;
* ``results.json``: machine and versions, the measured ceilings (copy bandwidth, bf16 matmul
  rate), each part's JSON and a flat table of every target with ``met`` true/false/null.

The last printed line is that JSON object; the lines above it summarise each step.

On the device machine (only torch, triton, transformers, numpy and pytest are there; Liger
travels as a wheel; token ids of real text as a ``.npy``), from the repository root::

    pip install --no-index --no-deps --target /tmp/site .gpu_carry/*.whl
    PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_session.py --out "$OUT"

Here, to check the script's logic first (tiny shapes, Triton interpreter, no figures)::

    PYTHONPATH=src python benchmarks/gpu_session.py --cpu-smoke --out out/gpu-smoke

``.gpu_carry/`` (git-ignored) is filled once here: the Liger-Kernel wheel with ``pip download
--no-deps --only-binary=:all: --python-version 3.12 -d .gpu_carry liger-kernel==0.8.5`` and the
token file with ``--write-tokens`` (SmolLM2's tokenizer over wikitext-2 validation).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry"
TOKENS = CARRY / "wikitext2_valid_smollm2.npy"
# Seconds each step may take at most; the overall deadline can cut them shorter.
LIMITS = {"env": 60, "tests": 150, "flce": 90, "bf16": 90, "train": 120, "generate": 120,
          "ops": 180}
ORDER = ["env", "tests", "flce", "bf16", "train", "generate", "ops"]


def write_tokens(path: Path = TOKENS) -> None:
    """Token ids of wikitext-2 validation under SmolLM2's tokenizer (uint16, ~0.5 MB)."""
    import numpy as np

    from datadiet.pipeline.models.tokenizer import load_tokenizer

    text = (ROOT.parent / "shared" / "data" / "lm" / "wikitext2_valid.txt").read_text()
    ids = np.asarray(load_tokenizer(None).encode(text), dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ids)
    print(f"wrote {len(ids)} token ids to {path}")


ENV_PROBE = r"""
import json, os, platform, subprocess, sys, time
import torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count()}
for mod in ("triton", "transformers", "numpy", "liger_kernel"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as exc:
        info[mod] = None
try:
    q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw"
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as exc:
    info["nvidia_smi"] = f"unavailable: {exc}"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, sm_count=p.multi_processor_count,
                capability=".".join(map(str, torch.cuda.get_device_capability())),
                memory_gib=round(p.total_memory / 2**30, 1))
    # The two ceilings (METHOD.md): device-to-device copy and a large bf16 matmul.
    a = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    s.record()
    for _ in range(10):
        b.copy_(a)
    e.record(); e.synchronize()
    info["copy_tb_per_s"] = round(2 * 2**30 * 10 / (s.elapsed_time(e) / 1e3) / 1e12, 2)
    del a, b
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize()
    s.record()
    for _ in range(10):
        x @ y
    e.record(); e.synchronize()
    info["bf16_matmul_tflops"] = round(2 * n**3 * 10 / (s.elapsed_time(e) / 1e3) / 1e12, 1)
print(json.dumps(info))
"""


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


class Session:
    """Runs the steps one after another under one deadline, logging everything."""

    def __init__(self, out: Path, deadline_s: float, smoke: bool) -> None:
        self.out = out
        self.smoke = smoke
        self.t_end = time.monotonic() + deadline_s
        out.mkdir(parents=True, exist_ok=True)
        self.log = (out / "session.log").open("a", buffering=1)
        self.results: dict[str, Any] = {"smoke": smoke, "steps": {}}

    def run(self, name: str, cmd: list[str], limit: float) -> dict[str, Any]:
        left = self.t_end - time.monotonic()
        timeout = min(limit, left)
        if timeout < 15:
            step = {"status": "skipped", "why": f"overall deadline ({left:.0f} s left)"}
            self.results["steps"][name] = step
            print(f"[{name}] skipped: deadline", flush=True)
            return step
        self.log.write(f"\n===== {name}: {' '.join(cmd)} (limit {timeout:.0f} s)\n")
        start = self.log.tell()
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                           os.environ.get("PYTHONPATH")]))}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's whole process group, nothing else
            proc.wait()
            rc = None
        seconds = round(time.monotonic() - t0, 1)
        self.log.flush()
        with (self.out / "session.log").open() as f:
            f.seek(start)
            text = f.read()
        status = "timeout" if rc is None else ("ok" if rc == 0 else f"exit {rc}")
        step = {"status": status, "seconds": seconds, "result": _last_json(text)}
        if rc != 0:
            step["tail"] = text.strip().splitlines()[-15:]
        self.results["steps"][name] = step
        print(f"[{name}] {status} in {seconds} s", flush=True)
        return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "out/gpu_session")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes through the Triton interpreter: tests this script only")
    parser.add_argument("--steps", nargs="+", choices=ORDER, default=ORDER)
    parser.add_argument("--deadline", type=float, default=400.0,
                        help="seconds for all steps together")
    parser.add_argument("--tokens", default=str(TOKENS) if TOKENS.exists() else None)
    parser.add_argument("--write-tokens", action="store_true", help=write_tokens.__doc__)
    args = parser.parse_args(argv)
    if args.write_tokens:
        write_tokens()
        return 0

    session = Session(Path(args.out), args.deadline * (4 if args.cpu_smoke else 1), args.cpu_smoke)
    py = sys.executable
    session.results["host"] = {"machine": platform.node(), "argv": sys.argv}
    for name in [s for s in ORDER if s in args.steps]:
        limit = LIMITS[name] * (4 if args.cpu_smoke else 1)
        if name == "env":
            session.run(name, [py, "-c", ENV_PROBE], limit)
        elif name == "tests":
            cmd = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                   f"--junitxml={Path(args.out).resolve() / 'tests.xml'}"]
            if args.cpu_smoke:
                cmd += ["tests/kernels/test_swiglu.py"]
            else:
                cmd += ["tests/kernels"]
                if importlib.util.find_spec("xdist") is not None:
                    cmd += ["-n", "8"]  # Triton compiles on the CPU; 16 cores there
            step = session.run(name, cmd, limit)
            step["result"] = _junit_summary(Path(args.out) / "tests.xml")
        else:
            cmd = [py, str(ROOT / "benchmarks" / "kernels_gpu.py"), "--part", name]
            if args.cpu_smoke:
                cmd.append("--smoke")
            if args.tokens:
                cmd += ["--tokens", args.tokens]
            session.run(name, cmd, limit)

    targets: dict[str, Any] = {}
    for name, step in session.results["steps"].items():
        result = step.get("result") or {}
        for key, value in (result.get("targets") or {}).items():
            targets[key] = value
        if name not in ("env", "tests") and step["status"] != "ok":
            targets[f"{name}: step completed"] = {"met": False, "why": step["status"]}
    session.results["targets"] = targets
    (Path(args.out) / "results.json").write_text(json.dumps(session.results, indent=1))
    print("\ntargets:")
    for key, value in targets.items():
        print(f"  {'MET ' if value.get('met') else 'MISS' if value.get('met') is False else '?   '}"
              f" {key}: {value.get('value', value.get('why', value.get('error')))}")
    tests = session.results["steps"].get("tests", {}).get("result")
    if tests:
        print(f"tests: {tests}")
    print(json.dumps({"targets": targets, "tests": tests,
                      "env": (session.results["steps"].get("env") or {}).get("result")}))
    return 0


def _junit_summary(path: Path) -> dict[str, Any] | None:
    """Counts and the names of failed tests from pytest's JUnit XML (None if not written)."""
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {
        "failed": failed[:40]
    }


if __name__ == "__main__":
    sys.exit(main())
