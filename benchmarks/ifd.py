"""Benchmark: IFD scoring throughput, datadiet's ``ifd`` step against the straightforward loop.

Claim: on the same model (SmolLM2-135M-Instruct), rows and machine, datadiet scores IFD at least
1.5x faster (``speedup`` >= 1.5) than the per-example Hugging Face loop a user would write in the
shape of the Cherry LLM reference — batch size 1, full logits, two forward passes per row (the
response given the instruction, then the response alone), loss from ``labels`` masked to the
response — and both give the same IFD (``max_abs_diff`` <= 1e-3).

Where the difference comes from: datadiet puts both passes of many rows into length-bucketed
batches, forms logits only for the response positions (the instruction's positions need none),
scores an identical sequence once (the same short answer under many instructions), and runs
on its own Llama. The baseline runs transformers' ``LlamaForCausalLM`` from the same folder.

Rows: T0 prompt/completion rows from ``../shared/data/sft/t0_train`` (a seeded draw over all
templates, rows that fit the 512-token window whole, so both sides score identical tokens).
The score cache is off: this measures the computation. Each side runs ``--repeat`` times,
interleaved, and its fastest run counts. ``tokens_per_s`` counts response tokens scored per
second (the unit of the claim), for datadiet.

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import time
from pathlib import Path

import numpy as np

DATA = Path(
    os.environ.get("DATADIET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
MAX_LENGTH = 512


def t0_rows(n: int, seed: int = 0) -> list[dict]:
    files = sorted(glob.glob(str(DATA / "sft" / "t0_train" / "*.jsonl")))
    pool = []
    for name in files:
        with open(name, encoding="utf-8") as fh:
            pool.extend(json.loads(line) for line in fh if line.strip())
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[: n * 2]  # filtered to n rows that fit the window below


def response_ids(tok, text: str) -> list[int]:
    """The response's tokens as IFD scores them: end-of-text markers are not content."""
    return [t for t in tok(text, add_special_tokens=False)["input_ids"] if t not in tok.all_special_ids]


def baseline_ifd(model, tok, rows: list[dict]) -> tuple[np.ndarray, float]:
    """Cherry-shaped loop: one row at a time, full logits, ``labels`` masked to the response."""
    import torch

    start = tok.eos_token_id
    out = np.empty(len(rows))
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = response_ids(tok, r["completion"])
        losses = []
        for ids, n_prompt in (([start, *p, *c], 1 + len(p)), ([start, *c], 1)):
            x = torch.tensor([ids], device=model.device)
            labels = x.clone()
            labels[0, :n_prompt] = -100
            with torch.inference_mode():
                losses.append(float(model(input_ids=x, labels=labels).loss))
        out[i] = losses[0] / losses[1]
    return out, time.perf_counter() - t0


def datadiet_ifd(rows: list[dict], tokens_per_batch: int | None) -> tuple[np.ndarray, float, str]:
    from datasets import Dataset

    from datadiet.pipeline.steps import StepContext
    from datadiet.selectors.ifd import IFD

    ctx = StepContext(show_progress=False)
    scorer = ctx.lm_scorer()  # loaded before the clock starts, as the baseline's model is
    if tokens_per_batch:
        scorer.tokens_per_batch = tokens_per_batch
    ds = Dataset.from_list(rows)
    t0 = time.perf_counter()
    sel = IFD(keep=1.0, max_ifd=None, cache=False, max_length=MAX_LENGTH).select(ds, ctx)
    return sel.scores, time.perf_counter() - t0, ctx.lm_scorer().backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 rows, one repeat")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--tokens-per-batch", type=int, default=None,
                        help="datadiet's padded-token budget per forward (default: the scorer's)")
    args = parser.parse_args()
    n = args.rows or (32 if args.quick else 256)
    repeat = args.repeat or (1 if args.quick else 2)

    from datadiet.pipeline.models.loading import load_causal_lm

    model, tok = load_causal_lm(None)
    rows = []
    for r in t0_rows(n):
        p = len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
        c = len(response_ids(tok, r["completion"]))
        if 1 + p + c <= MAX_LENGTH and c > 0:
            rows.append(r)
        if len(rows) == n:
            break
    response_tokens = sum(len(response_ids(tok, r["completion"])) for r in rows)
    ours_best = base_best = float("inf")
    backend = ""
    for _ in range(repeat):
        ours, t_ours, backend = datadiet_ifd(rows, args.tokens_per_batch)
        base, t_base = baseline_ifd(model, tok, rows)
        ours_best, base_best = min(ours_best, t_ours), min(base_best, t_base)
    diff = float(np.max(np.abs(ours - base)))
    import torch

    result = {
        "rows": len(rows),
        "response_tokens": response_tokens,
        "datadiet_s": round(ours_best, 3),
        "baseline_s": round(base_best, 3),
        "tokens_per_s": round(response_tokens / ours_best, 1),
        "baseline_tokens_per_s": round(response_tokens / base_best, 1),
        "speedup": round(base_best / ours_best, 2),
        "max_abs_diff": diff,
        "backend": backend,
        "threads": torch.get_num_threads(),
        "device": str(model.device),
        "targets": {"speedup": 1.5, "max_abs_diff": 1e-3},
        "met": bool(base_best / ours_best >= 1.5 and diff <= 1e-3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
