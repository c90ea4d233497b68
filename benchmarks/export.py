"""Whole-process tokenized export: ``datadiet export`` vs the ``datasets.map`` script a user
writes, same curated input, same tokenizer, same token file, side by side in one run.

The claim (issue 21): ``datadiet export`` turns a curated dataset into the token files a
training job reads at least 2x faster than the script a user would write: ``load_dataset`` on
the folder, ``Dataset.map`` (batched, SmolLM2's tokenizer, ``num_proc`` = cores), end-of-text
appended, then the tokens written as one flat memmap (``benchmarks/baselines/
export_datasets_map.py``). Input: the 55,185 T0 training prompts of ``../shared/data/sft/
t0_train`` (prompt + completion, as ``benchmarks/curate_e2e.py`` builds them; ``--quick``:
every fifth), curated once by exact dedup (not timed) into a curated output folder. Both
commands write the same flat ``uint16`` file, checked byte for byte; datadiet's default
(Megatron ``.idx`` as well) is timed too. Each command runs as its own process (wall, CPU,
peak RSS from ``wait4``), each with an empty ``datasets`` cache, rounds interleaved after one
warm-up of each, median of ``--rounds``.

``peak_mib_per_million_docs``: the slope of datadiet's peak RSS between the input and the same
prompts repeated to four times as many documents (suffixed, so none is a copy), per million
documents. Why not half the input: the allocator and the tokenizer's caches still grow over the
first tens of thousands of documents, and a slope over that range mistakes warm-up for cost per
document. ``--docs N`` repeats the T0 prompts up to N documents (the 1M-document size).

Usage: ``python benchmarks/export.py [--quick] [--rounds 3] [--docs N]``; the last line is a
JSON object. Record the machine's load average beside the figures (it is in the JSON).
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
from pathlib import Path

from curate_e2e import build_input, run_process

HERE = Path(__file__).resolve().parent
TARGET = 2.0
#: Shards of the curated input: a file is read whole, so a fixed shard size keeps the memory
#: slope a per-document figure.
ROWS_PER_SHARD = 10_000


def repeat_to(path: Path, docs: int) -> int:
    """Append copies of the file's records (ids suffixed) until it has ``docs`` lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    with open(path, "a", encoding="utf-8") as out:
        n, copy = len(lines), 1
        while n < docs:
            for line in lines[: docs - n]:
                record = json.loads(line)
                out.write(json.dumps({"id": f"{record['id']}~{copy}",
                                      "text": f"{record['text']} ({copy})"}) + "\n")
            n, copy = min(docs, n + len(lines)), copy + 1
    return docs


def curate_once(src: Path, out: Path, env: dict[str, str]) -> None:
    spec = out.parent / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n")
    subprocess.run([sys.executable, "-m", "datadiet", "curate", str(src), "--spec", str(spec),
                    "--out", str(out), "--quiet", "--rows-per-shard", str(ROWS_PER_SHARD)],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def datadiet_cmd(src: Path, out: Path, formats: str) -> list[str]:
    return [sys.executable, "-m", "datadiet", "export", str(src), "--out", str(out),
            "--format", formats]


def baseline_cmd(src: Path, tokenizer: Path, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "baselines" / "export_datasets_map.py"), str(src),
            str(tokenizer), str(out)]


def timed(cmd: list[str], out: Path, cache: Path) -> dict[str, float]:
    for folder in (out, cache):
        shutil.rmtree(folder, ignore_errors=True)
    os.environ["HF_DATASETS_CACHE"] = str(cache)  # a fresh cache: no reuse between rounds
    return run_process(cmd)


def median(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every fifth T0 prompt, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=0, help="repeat the prompts to N documents")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    from datadiet.pipeline.models.loading import smollm2_folder

    tokenizer = smollm2_folder()
    with tempfile.TemporaryDirectory(prefix="datadiet-bench-export-") as tmp:
        root = Path(tmp)
        src, big_src = root / "t0.jsonl", root / "t0-x4.jsonl"
        n_docs, _ = build_input(src, 5 if args.quick else 1)
        if args.docs > n_docs:
            n_docs = repeat_to(src, args.docs)
        shutil.copyfile(src, big_src)
        repeat_to(big_src, 4 * n_docs)
        env = {**os.environ, "HF_DATASETS_CACHE": str(root / "cache")}
        curated, big = root / "curated", root / "curated-x4"
        curate_once(src, curated, env)
        curate_once(big_src, big, env)
        kept = json.loads((curated / ".datadiet" / "manifest.json").read_text())["output"]["rows"]
        cache = root / "cache"
        runs: dict[str, list[dict[str, float]]] = {"datadiet": [], "datadiet_default": [],
                                                    "datasets_map": []}
        commands = {
            "datadiet": datadiet_cmd(curated, root / "out-dd", "memmap"),
            "datadiet_default": datadiet_cmd(curated, root / "out-dd2", "megatron,memmap"),
            "datasets_map": baseline_cmd(curated, tokenizer, root / "out-map"),
        }
        outs = {"datadiet": root / "out-dd", "datadiet_default": root / "out-dd2",
                "datasets_map": root / "out-map"}
        for name, cmd in commands.items():  # warm-up: imports and the page cache
            timed(cmd, outs[name], cache)
        same = (root / "out-dd" / "tokens.bin").read_bytes() == \
            (root / "out-map" / "tokens.bin").read_bytes()
        if not same:
            raise SystemExit("datadiet export and the datasets.map script wrote different tokens")
        for _ in range(rounds):
            for name, cmd in commands.items():
                runs[name].append(timed(cmd, outs[name], cache))
        big_runs = [timed(datadiet_cmd(big, root / "out-x4", "memmap"), root / "out-x4", cache)
                    for _ in range(rounds)]
        tokens = json.loads((root / "out-dd" / "tokens.json").read_text())["tokens"]
        result = {name: median(r) for name, r in runs.items()}
        big_peak = statistics.median(r["peak_mib"] for r in big_runs)
        big_docs = json.loads((big / ".datadiet" / "manifest.json").read_text())["output"]["rows"]
        slope = (big_peak - result["datadiet"]["peak_mib"]) / max(1, big_docs - kept) * 1e6
        ratio = result["datasets_map"]["wall_s"] / result["datadiet"]["wall_s"]
        summary = {
            "benchmark": "export",
            "documents": kept,
            "tokens": tokens,
            "cores": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "rounds": rounds,
            "same_tokens": same,
            **{f"{k}_wall_s": v["wall_s"] for k, v in result.items()},
            **{f"{k}_peak_mib": round(v["peak_mib"], 1) for k, v in result.items()},
            "datadiet_tokens_per_s": round(tokens / result["datadiet"]["wall_s"]),
            "vs_datasets_map": round(ratio, 2),
            "target_vs_datasets_map": TARGET,
            "peak_mib_per_million_docs": round(slope, 1),
            "memory_slope_docs": [kept, big_docs],
            "datadiet_peak_mib_at_slope_end": round(big_peak, 1),
            "runs": result,
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
