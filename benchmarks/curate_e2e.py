"""Whole-process curation: ``datadiet curate`` vs the dedup script a user writes with rensa or
datasketch, same input, same spec, side by side in one run.

The claim (issue 10): a user times the whole command, not the inner loops. Input: the 55,185
T0 training prompts of ``../shared/data/sft/t0_train`` as one JSONL of ``{id, text}`` with text =
prompt + completion (``--quick``: every fifth record). Spec: ``exact_dedup`` + ``minhash_dedup``
at Jaccard 0.8, 128 permutations, word 5-grams. Baselines (``benchmarks/baselines/``, code we
wrote the obvious way): ``json.loads`` per line, a set of text digests, then per document a
MinHash of its word 5-grams, an LSH query (candidates checked against 0.8) and an insert; kept
lines written out. Each command runs as its own process; wall time, CPU time and peak RSS come
from ``os.wait4`` (the kernel's accounting for that child, what ``/usr/bin/time`` reports).
Rounds are interleaved (datadiet, rensa, datasketch, datadiet, ...) after one warm-up of each
on a small file (imports, the page cache), and the median of ``--rounds`` counts.

Targets: ``vs_rensa_script`` (rensa script wall / datadiet wall) >= 3 and
``peak_vs_rensa_script`` (datadiet peak RSS / rensa script peak RSS) <= 2.

Kept sets differ by design, and the JSON says by how much (``agreement_*``: the fraction of
documents on whose fate two runs agree). datadiet normalises text before exact hashing and
clusters near duplicates (connected components, earliest row kept), while the scripts compare
raw text and keep a document unless it is close to one already kept.

The same run measures single steps in-process on the same texts (``steps``): documents per
second of wall time and per CPU-second (per core), after a warm-up, median of the rounds; and
datadiet's memory per document, as the slope of its peak memory between the first half of the
input and all of it (``mib_per_million_docs``).

The fixed cost of each command (start-up and imports) is the same measurement on the first 300
documents (``startup_300_docs``). This spec's file run streams on the C kernels and loads
neither numba nor ``datasets`` at any size; the in-process step figures use the ``Dataset``
runner (quality's kernels are numba).

Usage: ``python benchmarks/curate_e2e.py [--quick] [--rounds 3]``; the last line is a JSON
object. Record the machine's load average beside the figures (it is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DATADIET_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
SPEC = """\
- exact_dedup: {}
- minhash_dedup: {threshold: 0.8, num_perm: 128, ngram: 5}
"""
TARGET_VS_RENSA = 3.0
TARGET_PEAK_VS_RENSA = 2.0


def build_input(path: Path, every: int) -> tuple[int, int]:
    """Write the T0 prompts as ``{id, text}`` JSONL (every ``every``-th record); returns
    (documents, bytes of text)."""
    n = text_bytes = 0
    with open(path, "w", encoding="utf-8") as out:
        for src in sorted((DATA / "sft" / "t0_train").glob("*.jsonl")):
            with open(src, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if i % every:
                        continue
                    rec = json.loads(line)
                    text = rec["prompt"] + rec["completion"]
                    out.write(json.dumps({"id": f"{src.stem}-{i}", "text": text}) + "\n")
                    n += 1
                    text_bytes += len(text.encode("utf-8"))
    return n, text_bytes


def _anon_kib(pid: int) -> int:
    """The process's private (anonymous) resident memory now, from /proc (Linux), else 0."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _child_pid(pid: int) -> int | None:
    """The one child of ``pid`` (Linux), or None while it has none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


#: Starts a command from a small process and reports its wall time and ``wait4`` usage as JSON.
#: Why not ``Popen`` from here: on Linux a child's ``ru_maxrss`` starts at the peak of the
#: process that forked it (the high-water mark of the address space it replaced at ``exec``),
#: and this benchmark's own peak (pyarrow, ~80 MiB) would floor every command's figure. The
#: launcher's peak (~10 MiB, a bare interpreter) is below any command's own.
LAUNCHER = """
import json, os, sys, time
null = os.open(os.devnull, os.O_WRONLY)
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_kib": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}, f)
"""


def run_process(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` to completion: wall seconds, CPU seconds, peak RSS and peak private memory.

    Wall, CPU and peak RSS are ``wait4``'s (what ``/usr/bin/time`` reports), taken by
    :data:`LAUNCHER`. Peak RSS (``ru_maxrss``) counts shared libraries' resident pages too, for
    example the 90 MiB of LLVM that numba maps; the private figure (``RssAnon``, polled every
    20 ms) is the memory the process itself allocated.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, report.name, *cmd])
        peak_anon = 0
        while proc.poll() is None:
            child = _child_pid(proc.pid)
            if child is not None:
                peak_anon = max(peak_anon, _anon_kib(child))
            time.sleep(0.02)
        usage = json.loads(Path(report.name).read_text())
    if proc.returncode != 0 or usage["exit"] != 0:
        raise RuntimeError(f"{cmd} failed with exit status {usage['exit']}")
    return {
        "wall_s": usage["wall_s"],
        "cpu_s": usage["cpu_s"],
        "peak_mib": usage["peak_kib"] / 1024,  # Linux reports KiB
        "peak_private_mib": peak_anon / 1024,
    }


def datadiet_cmd(src: Path, out: Path, spec: Path) -> list[str]:
    return [sys.executable, "-m", "datadiet", "curate", str(src), "--spec", str(spec),
            "--out", str(out), "--quiet", "--overwrite"]


def script_cmd(name: str, src: Path, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "baselines" / name), str(src), str(out)]


def kept_ids(output: Path) -> set[str]:
    """Ids kept by a run: the Parquet shards of a datadiet output folder or a script's JSONL."""
    if output.is_dir():
        return {i for f in sorted(output.glob("*.parquet"))
                for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()}
    with open(output, encoding="utf-8") as f:
        return {json.loads(line)["id"] for line in f}


def agreement(a: set[str], b: set[str], n: int) -> float:
    """Fraction of the ``n`` documents that both runs keep or both remove."""
    return 1.0 - len(a ^ b) / n


def median_run(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}


def step_throughput(texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """exact_dedup, minhash_dedup and quality alone, in this process, on ``texts``."""
    import numba
    from datasets import Dataset

    from datadiet.pipeline.steps import StepContext
    from datadiet.selectors import native
    from datadiet.selectors.exact import ExactDedup
    from datadiet.selectors.jit import KERNEL_MIN_ROWS
    from datadiet.selectors.minhash import MinHashDedup
    from datadiet.selectors.quality import QualityFilter

    ds = Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": texts})
    warm = ds.select(range(min(KERNEL_MIN_ROWS, len(texts))))  # big enough to load quality's numba
    out: dict[str, dict[str, float]] = {}
    steps: dict[str, Callable[[], object]] = {
        "exact_dedup": ExactDedup,
        "minhash_dedup": lambda: MinHashDedup(threshold=0.8, num_perm=128, ngram=5),
        "quality": QualityFilter,
    }
    for name, make in steps.items():
        ctx = StepContext(show_progress=False)
        make().select(warm, ctx)
        walls, cpus = [], []
        for _ in range(rounds):
            w0, c0 = time.perf_counter(), time.process_time()
            make().select(ds, StepContext(show_progress=False))
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        out[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "docs_per_s": round(len(texts) / wall),
            "docs_per_cpu_s": round(len(texts) / cpu),
        }
    out["numba_threads"] = numba.get_num_threads()  # type: ignore[assignment] - quality's
    # exact and MinHash run the C kernels when built (all cores), else the NumPy fallback
    out["c_kernel_threads"] = native.threads() if native.available() else 0  # type: ignore[assignment]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every fifth T0 record (~11k documents)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-datasketch", action="store_true", help="datasketch is the slow one")
    args = ap.parse_args()
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="datadiet-curate-e2e-"))
    try:
        src = work / "t0.jsonl"
        n_docs, n_bytes = build_input(src, 5 if args.quick else 1)
        spec = work / "spec.yaml"
        spec.write_text(SPEC, encoding="utf-8")
        small = work / "small.jsonl"
        with open(src, encoding="utf-8") as f, open(small, "w", encoding="utf-8") as g:
            g.writelines(line for _, line in zip(range(300), f, strict=False))

        commands: dict[str, Callable[[Path, Path], list[str]]] = {
            "datadiet": lambda i, o: datadiet_cmd(i, o, spec),
            "rensa_script": lambda i, o: script_cmd("rensa_script.py", i, o),
        }
        if not args.skip_datasketch:
            commands["datasketch_script"] = lambda i, o: script_cmd("datasketch_script.py", i, o)
        outputs = {name: work / (name if name == "datadiet" else f"{name}.jsonl")
                   for name in commands}
        for name, cmd in commands.items():  # warm-up: imports, numba's cache, page cache
            run_process(cmd(small, work / f"warm-{name}"))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        startup: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                startup[name].append(run_process(cmd(small, work / f"small-{name}")))
                runs[name].append(run_process(cmd(src, outputs[name])))
        med = {name: median_run(r) for name, r in runs.items()}
        kept = {name: kept_ids(outputs[name]) for name in commands}
        # Memory per document: the slope between this input and its first half.
        half = work / "half.jsonl"
        with open(src, encoding="utf-8") as f, open(half, "w", encoding="utf-8") as g:
            g.writelines(line for _, line in zip(range(n_docs // 2), f, strict=False))
        half_run = run_process(datadiet_cmd(half, work / "half-out", spec))

        texts = [json.loads(line)["text"] for line in open(src, encoding="utf-8")]
        steps = step_throughput(texts, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    dd = med["datadiet"]
    fixed = {name: median_run(r) for name, r in startup.items()}
    print(f"{n_docs:,} documents, {n_bytes / 1e6:.1f} MB of text, {os.cpu_count()} cores, "
          f"load average {load_start[0]:.2f} -> {load_end[0]:.2f}")
    print(f"{'pipeline':<20} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'private':>8} "
          f"{'kept':>7}")
    for name, m in med.items():
        print(f"{name:<20} {m['wall_s']:>8.2f} {m['cpu_s']:>8.2f} {m['peak_mib']:>9.0f} "
              f"{m['peak_private_mib']:>8.0f} {len(kept[name]):>7}")
    for name, m in fixed.items():
        print(f"{name:<20} 300 documents: {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} CPU-s, "
              f"{m['peak_mib']:.0f} MiB peak")
    for name, s in steps.items():
        if isinstance(s, dict):
            print(f"step {name:<15} {s['docs_per_s']:>9,} docs/s  "
                  f"{s['docs_per_cpu_s']:>9,} docs per CPU-second")
    result = {
        "n_docs": n_docs,
        "text_mb": round(n_bytes / 1e6, 1),
        "cores": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in load_end],
        "rounds": args.rounds,
        "runs": med,
        "kept": {name: len(ids) for name, ids in kept.items()},
        "agreement_vs_rensa_script": round(agreement(kept["datadiet"], kept["rensa_script"],
                                                     n_docs), 4),
        "vs_rensa_script": round(med["rensa_script"]["wall_s"] / dd["wall_s"], 2),
        "peak_mib": round(dd["peak_mib"], 1),
        "peak_vs_rensa_script": round(dd["peak_mib"] / med["rensa_script"]["peak_mib"], 2),
        "peak_private_vs_rensa_script": round(
            dd["peak_private_mib"] / med["rensa_script"]["peak_private_mib"], 2),
        "docs_per_s": round(n_docs / dd["wall_s"]),
        "gb_per_hour": round(n_bytes / dd["wall_s"] * 3600 / 1e9, 2),
        "mib_per_million_docs": {
            key: round((dd[key] - half_run[key]) / (n_docs - n_docs // 2) * 1e6)
            for key in ("peak_mib", "peak_private_mib")
        },
        "steps": steps,
        "startup_300_docs": fixed,
    }
    if "datasketch_script" in med:
        result["vs_datasketch_script"] = round(med["datasketch_script"]["wall_s"] / dd["wall_s"],
                                               2)
        result["agreement_vs_datasketch_script"] = round(
            agreement(kept["datadiet"], kept["datasketch_script"], n_docs), 4)
    result["targets_met"] = {
        "vs_rensa_script>=3": result["vs_rensa_script"] >= TARGET_VS_RENSA,
        "peak_vs_rensa_script<=2": result["peak_vs_rensa_script"] <= TARGET_PEAK_VS_RENSA,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
