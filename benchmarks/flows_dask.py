"""Benchmark: the ``curate`` flow on two local Dask workers against the same flow in one process.

Claim measured (no target set in advance): how much of a two-core machine the flow's Dask path
uses. The spec is ``exact_dedup``, ``minhash_dedup`` (0.8), ``quality`` (Gopher/C4 rules), on T0
prompts+completions from ``../shared/data/sft/t0_train``. Both runs are the flow's one curation
task on the library's engine: ``runner="local"`` on the in-process executor, ``runner="dask"``
on the Dask executor (a local cluster of two worker processes: maps on the workers, the dedup
reduces distributed, the one writer in the flow's process). Both runs start from an empty
cache; the Dask run's time includes starting its local cluster (the user pays it too). The
outputs (kept ids, reasons) are compared and must be equal.

Each mode runs ``--repeat`` times, interleaved; the fastest counts (a shared machine only ever
adds time). Prefect uses its embedded API (the first, untimed warm-up run starts it).

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

DATA = Path(
    os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SPEC = "- exact_dedup: {}\n- minhash_dedup: {threshold: 0.8}\n- quality: {}\n"


def write_corpus(path: Path, docs: int) -> int:
    rows = []
    for name in sorted(glob.glob(str(DATA / "sft" / "t0_train" / "*.jsonl"))):
        with open(name, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                rows.append(record["prompt"] + record["completion"].replace("<|endoftext|>", ""))
                if len(rows) >= docs:
                    break
        if len(rows) >= docs:
            break
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(rows):
            f.write(json.dumps({"id": f"t0-{i}", "text": text}) + "\n")
    return len(rows)


def run_once(corpus: Path, root: Path, runner: str, workers: int) -> tuple[float, list, list]:
    import pyarrow.parquet as pq

    from datadiet.flows import curate
    from datadiet.pipeline.io import REMOVED_FILE, read_removed

    out = root / f"out-{runner}"
    storage = root / f"storage-{runner}"
    for folder in (out, storage):
        shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    curate(source=str(corpus), out=str(out), spec=SPEC, storage=str(storage), tokenizer="bytes",
           rows_per_shard=1_000_000, runner=runner, workers=workers)
    seconds = time.perf_counter() - start
    removed = read_removed(out / REMOVED_FILE).to_pylist()
    kept = [i for s in sorted(out.glob("*.parquet")) for i in pq.read_table(s).column("id").to_pylist()]
    return seconds, removed, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8,000 documents, one repeat")
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    # The embedded API's first start migrates a fresh SQLite database: on two busy cores that
    # takes longer than Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    docs, repeat = (8_000, 1) if args.quick else (args.docs, args.repeat)
    root = Path(tempfile.mkdtemp(prefix="datadiet-bench-flows-"))
    try:
        corpus = root / "t0.jsonl"
        n = write_corpus(corpus, docs)
        small = root / "warmup.jsonl"
        write_corpus(small, 2000)  # KERNEL_MIN_ROWS: enough to load the compiled kernels
        run_once(small, root / "warmup", "local", 1)  # starts the embedded API, compiles numba
        times: dict[str, list[float]] = {"local": [], "dask": []}
        outputs = {}
        for _ in range(repeat):
            for runner in ("local", "dask"):
                seconds, removed, kept = run_once(corpus, root, runner, args.workers)
                times[runner].append(seconds)
                outputs[runner] = (removed, kept)
                print(f"{runner:>5}: {seconds:7.2f} s  ({len(kept)} of {n} kept)", flush=True)
        equal = outputs["local"] == outputs["dask"]
        best = {k: min(v) for k, v in times.items()}
        print(json.dumps({"docs": n, "workers": args.workers, "cores": os.cpu_count(),
                          "local_s": round(best["local"], 2), "dask_s": round(best["dask"], 2),
                          "speedup": round(best["local"] / best["dask"], 3),
                          "outputs_equal": equal, "load_average": os.getloadavg()[0]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # Dask's worker processes spawn: this guard is required
    main()
