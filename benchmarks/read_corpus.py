"""Reading a JSONL corpus: datadiet's reader vs pyarrow's C++ JSON reader vs ``json.loads``.

The claim (issue 10): well-formed JSONL is read at the speed of pyarrow's C++ reader — parsing,
UTF-8 validation, the fingerprint over every byte and the id check included — and the
line-by-line validator runs only to name or skip a bad line.

Input: the T0 training files of ../shared/data/sft/t0_train as one JSONL of ``{id, text}``
with text = prompt + completion (55,185 documents; ``--quick``: the first 40 files). Three
readers, best of ``--repeats`` interleaved rounds after a warm-up:

* datadiet: ``load_corpus(path)`` — the CLI's reader (Arrow out, ids checked, fingerprinted);
* pyarrow: ``pyarrow.json.read_json(path)`` plus an xxh3-128 pass over the bytes: the floor
  for "parse and fingerprint" with the C++ reader (no checks);
* json_loads: a plain script, ``json.loads`` per line into lists and one ``pa.table``: what
  datadiet's reader did before (it also checked each row in Python).

Usage: ``python benchmarks/read_corpus.py [--quick]``; the last line printed is a JSON object
with ``vs_pyarrow`` (datadiet time / pyarrow time; target at most 1.5) and ``vs_json_loads``
(json_loads time / datadiet time).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import xxhash

from datadiet.pipeline.io import load_corpus

DATA = Path(os.environ.get("DATADIET_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def build_corpus(path: Path, quick: bool) -> int:
    files = sorted((DATA / "sft" / "t0_train").glob("*.jsonl"))[: 40 if quick else None]
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for f in files:
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    out.write(json.dumps({"id": f"t{n}", "text": rec["prompt"] + rec["completion"]})
                              + "\n")
                    n += 1
    return n


def read_datadiet(path: Path) -> int:
    return len(load_corpus(path).dataset)


def read_pyarrow(path: Path) -> int:
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 23), b""):
            h.update(chunk)
    return pa_json.read_json(path).num_rows


def read_json_loads(path: Path) -> int:
    ids, texts = [], []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                rec = json.loads(raw)
                ids.append(str(rec["id"]))
                texts.append(rec["text"])
    return pa.table({"id": ids, "text": texts}).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t0.jsonl"
        n = build_corpus(path, args.quick)
        size_mb = path.stat().st_size / 1e6
        readers = {"datadiet": read_datadiet, "pyarrow": read_pyarrow, "json_loads": read_json_loads}
        for fn in readers.values():  # warm-up: imports, page cache
            fn(path)
        best = dict.fromkeys(readers, float("inf"))
        for _ in range(args.repeats):
            for name, fn in readers.items():
                t0 = time.perf_counter()
                rows = fn(path)
                best[name] = min(best[name], time.perf_counter() - t0)
                assert rows == n, (name, rows, n)
        for name, seconds in best.items():
            print(f"{name:<11} {seconds:7.3f} s  {n / seconds:12,.0f} docs/s  {size_mb / seconds:7.1f} MB/s")
        print(json.dumps({
            "docs": n, "mb": round(size_mb, 1), "cores": os.cpu_count(),
            "datadiet_s": round(best["datadiet"], 3), "pyarrow_s": round(best["pyarrow"], 3),
            "json_loads_s": round(best["json_loads"], 3),
            "vs_pyarrow": round(best["datadiet"] / best["pyarrow"], 2),
            "vs_json_loads": round(best["json_loads"] / best["datadiet"], 2),
            "docs_per_s": round(n / best["datadiet"]),
        }))


if __name__ == "__main__":
    main()
