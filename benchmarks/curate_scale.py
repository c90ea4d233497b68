"""Cost per million documents as the corpus grows: ``datadiet curate`` in-process vs on 2 local
Dask workers (issue 23).

The claim: curation cost grows linearly with the corpus (time per million documents about
constant; in-process peak memory well below linear, because features spill to scratch files),
and the Dask executor, whose reduces are distributed, is not far behind one process on one
machine while holding no feature in the driver.

Corpora: the 55,185 T0 training prompts of ``../shared/data/sft/t0_train`` as ``{id, text}``
(text = prompt + completion, as in ``benchmarks/curate_e2e.py``), then 1M and 5M documents
made of copies of it in which copy ``k`` prefixes every space-separated word with a tag of its
own. Within a copy the duplicates of T0 stay duplicates (exact and near); across copies no
shingle is shared. So every size has the same duplicate structure and document lengths, and
the work per document is the same. 5M is built only when the disk holds it (``df``).
``--quick``: 55K/5 and 200K documents.

Spec: ``exact_dedup`` + ``minhash_dedup`` (0.8, 128 permutations, word 5-grams) — the issue's.
Each run is its own process, measured by ``os.wait4`` (wall, CPU of the process and of the
workers it reaped, peak RSS) through curate_e2e's launcher; the Dask run also reports its
driver's and each worker's peak RSS. Local: ``datadiet curate``. Dask: the same
``curate_path`` call with a ``DaskExecutor`` (``LocalCluster``: 2 worker processes, one thread
each, partitions of 65,536 rows), which is what ``datadiet curate --executor dask`` runs; a
helper mode of this script runs it so that the per-worker peaks can be read.

Usage: ``python benchmarks/curate_scale.py [--quick]``; the last line printed is a JSON object
with ``seconds_per_million_docs`` and ``peak_mib_per_million_docs`` for each size and executor,
and ``dask_vs_local`` (Dask wall / local wall) at the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from curate_e2e import DATA, run_process  # noqa: E402

SPEC = """\
- exact_dedup: {}
- minhash_dedup: {threshold: 0.8, num_perm: 128, ngram: 5}
"""
TARGET_TIME_GROWTH = 1.2  # seconds per million at 5M over the figure at 1M
TARGET_PEAK_GROWTH = 1.5  # in-process peak at 5M over the peak at 1M
TARGET_DASK_VS_LOCAL = 1.5


def t0_records() -> list[tuple[str, str]]:
    rows = []
    for src in sorted((DATA / "sft" / "t0_train").glob("*.jsonl")):
        with open(src, encoding="utf-8") as f:
            for i, line in enumerate(f):
                rec = json.loads(line)
                rows.append((f"{src.stem}-{i}", rec["prompt"] + rec["completion"]))
    return rows


def build_corpus(path: Path, base: list[tuple[str, str]], docs: int) -> int:
    """``docs`` documents: copy 0 is T0 itself, copy ``k`` tags every word with ``k``."""
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(docs // len(base) + 1):
            tag = f"c{copy}x" if copy else ""
            lines = []
            for doc_id, text in base[: docs - n]:
                if tag:
                    text = tag + text.replace(" ", " " + tag)
                lines.append(json.dumps({"id": f"{copy}-{doc_id}", "text": text}))
            out.write("\n".join(lines) + "\n")
            n += len(lines)
            if n >= docs:
                break
    return n


def helper_dask(src: str, out: str, spec: str, report: str, workers: str = "2",
                memory_limit: str = "auto") -> None:
    """The Dask run, in its own process: curate_path with a DaskExecutor on local workers
    (``memory_limit`` per worker: Dask's own setting, past which a worker spills and then
    pauses)."""
    from datadiet.pipeline.curate import curate_path, load_spec
    from datadiet.pipeline.executors.dask import DaskExecutor

    with DaskExecutor(workers=int(workers), memory_limit=memory_limit) as executor:
        result = curate_path(src, load_spec(spec), out, overwrite=True, show_progress=False,
                             executor=executor)
        workers = executor.worker_peak_mib()
    Path(report).write_text(json.dumps({
        "rows_out": result.rows_kept,
        "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mib": sorted(workers.values()),
    }))


def manifest_of(out: Path) -> dict:
    from datadiet.pipeline.io import find_manifest

    return json.loads(find_manifest(out).read_text())


def measure(src: Path, docs: int, work: Path, spec: Path, limited: tuple[int, str] | None) -> dict:
    """Both executors on one corpus: wall, CPU and peak, and per million documents; with
    ``limited`` = (workers, memory per worker), also a Dask run on that many workers each held
    to that memory (issue 23: past what one process's reduce needs)."""
    local_out, dask_out = work / "out-local", work / "out-dask"
    local = run_process([sys.executable, "-m", "datadiet", "curate", str(src), "--spec",
                         str(spec), "--out", str(local_out), "--quiet", "--overwrite"])
    report = work / "dask.json"
    dask = run_process([sys.executable, str(Path(__file__).resolve()), "--helper-dask", str(src),
                        str(dask_out), str(spec), str(report)])
    dask.update(json.loads(report.read_text()))
    local_output = manifest_of(local_out)["output"]
    runs = [("local", local), ("dask", dask)]
    same = local_output["rows"] == dask["rows_out"] and \
        local_output["fingerprint"] == manifest_of(dask_out)["output"]["fingerprint"]
    shutil.rmtree(dask_out)
    if limited:
        workers, memory = limited
        try:
            capped = run_process([sys.executable, str(Path(__file__).resolve()),
                                  "--helper-dask", str(src), str(dask_out), str(spec),
                                  str(report), str(workers), memory])
        except RuntimeError as exc:  # a figure either way: a failed capped run is one
            print(f"memory-limited Dask run failed: {exc}", flush=True)
            capped = {"failed": True}
        else:
            capped.update(json.loads(report.read_text()))
            same = same and local_output["rows"] == capped["rows_out"] and \
                local_output["fingerprint"] == manifest_of(dask_out)["output"]["fingerprint"]
            runs.append(("dask_limited", capped))
        capped["workers"], capped["memory_limit"] = workers, memory
        shutil.rmtree(dask_out, ignore_errors=True)
    shutil.rmtree(local_out)
    million = docs / 1e6
    result = {"docs": docs, "rows_kept": local_output["rows"], "same_kept_rows": same}
    for name, run in runs:
        result[name] = {k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()
                        if k != "rows_out"}
        result[name]["seconds_per_million_docs"] = round(run["wall_s"] / million, 2)
        result[name]["cpu_seconds_per_million_docs"] = round(run["cpu_s"] / million, 2)
        result[name]["peak_mib_per_million_docs"] = round(run["peak_mib"] / million, 1)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="",
                        help="comma-separated corpus sizes instead of 55K,1M,5M (the full run)")
    parser.add_argument("--limited", default="4x400MB",
                        help="also run Dask on WORKERSxMEMORY workers at sizes of 1M and more "
                             "(issue 23's 'past one process's memory'); 'none' to skip")
    parser.add_argument("--helper-dask", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper_dask:
        helper_dask(*args.helper_dask)
        return
    base = t0_records()
    sizes = [len(base) // 5, 200_000] if args.quick else [len(base), 1_000_000, 5_000_000]
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    load = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="curate-scale-") as tmp:
        work = Path(tmp)
        spec = work / "spec.yaml"
        spec.write_text(SPEC, encoding="utf-8")
        for docs in sizes:
            src = work / f"corpus-{docs}.jsonl"
            start = time.perf_counter()
            if docs <= len(base):
                build_corpus(src, base[:docs], docs)
            else:
                # corpus + scratch copy + output: about 3.5x the JSONL; 1.3 KB a document
                if shutil.disk_usage(work).free < docs * 1300 * 4:
                    print(f"skipping {docs:,} documents: not enough free disk", flush=True)
                    continue
                build_corpus(src, base, docs)
            print(f"built {docs:,} documents ({src.stat().st_size / 2**30:.2f} GiB) in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            limited = None
            if args.limited != "none" and docs >= 1_000_000:
                workers, memory = args.limited.split("x")
                limited = (int(workers), memory)
            results[docs] = measure(src, docs, work, spec, limited)
            src.unlink()
    largest = max(results)
    summary = {
        "machine": f"{os.cpu_count()} cores",
        "load_avg_1m_at_start": round(load[0], 2),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "spec": SPEC.strip().replace("\n", "; "),
        "sizes": results,
        "seconds_per_million_docs": {str(d): {x: r[x]["seconds_per_million_docs"]
                                              for x in ("local", "dask")}
                                     for d, r in results.items()},
        "peak_mib_per_million_docs": {str(d): {x: r[x]["peak_mib_per_million_docs"]
                                               for x in ("local", "dask")}
                                      for d, r in results.items()},
        "dask_vs_local": round(results[largest]["dask"]["wall_s"]
                               / results[largest]["local"]["wall_s"], 2),
        "target_dask_vs_local": TARGET_DASK_VS_LOCAL,
        "all_same_kept_rows": all(r["same_kept_rows"] for r in results.values()),
    }
    for docs, r in results.items():
        if "dask_limited" in r:
            summary.setdefault("limited_worker_peak_mib", {})[str(docs)] = {
                "memory_limit": r["dask_limited"]["memory_limit"],
                "workers": r["dask_limited"]["worker_peak_mib"],
                "local_peak_mib": r["local"]["peak_mib"]}
    if 1_000_000 in results and 5_000_000 in results:
        one, five = results[1_000_000]["local"], results[5_000_000]["local"]
        summary["local_time_growth_1m_to_5m"] = round(
            five["seconds_per_million_docs"] / one["seconds_per_million_docs"], 2)
        summary["local_peak_growth_1m_to_5m"] = round(five["peak_mib"] / one["peak_mib"], 2)
        summary["targets"] = {"time_growth": TARGET_TIME_GROWTH,
                              "peak_growth": TARGET_PEAK_GROWTH}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
