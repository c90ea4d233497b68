"""CPU benchmark of datadiet's model stack against transformers, in one run.

Claims under test (issue "Model, trainer, inference"):

* ``flce_mem_ratio`` >= 4: peak memory of ``F.cross_entropy(lm_head(x))`` forward+backward over
  the fused linear cross-entropy's, at SmolLM2's vocabulary (49,152), 4,096 tokens, hidden 576.
* ``train_speed_vs_hf`` >= 1.0: training tokens/s of datadiet's Llama over transformers'
  ``LlamaForCausalLM`` with the same config, the same initial weights and the same batches.
* ``generate_speed_vs_hf`` >= 1.5: greedy generation tokens/s of datadiet's ``Generator`` over
  ``transformers.generate`` on SmolLM2-135M-Instruct, same prompts, same batch.
* ``smollm2_max_logit_diff`` < 1e-3: max |logit difference| against transformers on real text.

How it is measured, and why:

* Memory: each side runs forward+backward in a fresh worker process (this script with
  ``--flce-worker``), and the figure is the process's peak RSS (``ru_maxrss``) minus its RSS
  just before the step, with the inputs already allocated. On CPU there is no allocator
  counter like CUDA's, a sampling thread misses short peaks, and a fresh process keeps one
  side's freed-but-cached memory from flattering the other. Both sides include the gradients
  of ``hidden`` and of the ``[V, H]`` weight, which any implementation must return.
* Speed on a shared machine: the two sides run alternately, round after round, and each side's
  figure is its best round (minimum time), so a burst of load from other processes hits both
  and the least-disturbed measurement of each is compared. Model loading is excluded.
* Training: the ``small`` preset (6 layers, d=256, GQA 8/4 heads, SwiGLU 688, SmolLM2's
  49,152-token vocabulary, tied embeddings), batch 4 x 256 tokens of Tiny Shakespeare packed
  with the SmolLM2 tokenizer, fp32, AdamW; transformers with SDPA attention and its own loss
  (``labels`` + ``shift_labels`` so both predict the same targets). The first-step losses of
  the two must agree, which checks that the comparison is wired right.
* Generation: 4 prompts (left-padded batch) and, as a second figure, 1 prompt; a fixed number
  of new tokens on both sides (transformers: ``min_new_tokens``; datadiet: no stop tokens).
* Threads: ``--threads`` (default 1). On a 2-core box shared with other jobs, two OpenMP
  threads spin at barriers whenever one core is taken, which measures the scheduler rather
  than the code; pass ``--threads 2`` on an idle machine.

Usage: ``python benchmarks/kernels_cpu.py [--quick] [--threads N]``; the last line printed is
a JSON object with the keys above (plus the raw figures). ``--quick`` uses fewer rounds and new
tokens (the memory case keeps its full size: it is cheap in memory terms and the claim is about
that size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DATADIET_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("TRITON_INTERPRET", None)  # the CPU path is the PyTorch one; never the interpreter

VOCAB, TOKENS, HIDDEN = 49_152, 4_096, 576
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):",
    "Sherlock Holmes looked at me and said",
]


# -- memory: fused linear cross-entropy ------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def flce_worker(kind: str, tokens: int, threads: int) -> None:
    """One forward+backward in this (fresh) process; prints the extra peak bytes as JSON."""
    import torch
    import torch.nn.functional as F

    from datadiet.kernels import ops

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hidden = torch.randn(tokens, HIDDEN, requires_grad=True)
    weight = (torch.randn(VOCAB, HIDDEN) * 0.02).requires_grad_()
    targets = torch.randint(0, VOCAB, (tokens,))
    if kind == "fused":
        step: Callable[[], Any] = lambda: ops.fused_linear_cross_entropy(hidden, weight, targets)  # noqa: E731
    else:
        step = lambda: F.cross_entropy(F.linear(hidden, weight).float(), targets)  # noqa: E731
    before = _rss()
    t0 = time.perf_counter()
    loss = step()
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"kind": kind, "extra_peak_bytes": peak - before, "loss": loss.item(),
                      "seconds": seconds, "backend": ops.backend("cpu")}))


def bench_flce_memory(threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("reference", "fused"):
        proc = subprocess.run(
            [sys.executable, __file__, "--flce-worker", kind, "--threads", str(threads)],
            capture_output=True, text=True, check=True,
        )
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"flce {kind:9s}: extra peak {out[kind]['extra_peak_bytes'] / 2**20:8.1f} MiB, "
              f"{out[kind]['seconds']:.2f} s, loss {out[kind]['loss']:.5f}", flush=True)
    if abs(out["reference"]["loss"] - out["fused"]["loss"]) > 1e-3:
        raise RuntimeError(f"fused and reference losses differ: {out}")
    return {
        "flce_mem_ratio": out["reference"]["extra_peak_bytes"] / out["fused"]["extra_peak_bytes"],
        "flce_ref_peak_mib": out["reference"]["extra_peak_bytes"] / 2**20,
        "flce_fused_peak_mib": out["fused"]["extra_peak_bytes"] / 2**20,
        "flce_backend": out["fused"]["backend"],
    }


# -- alternating timing ----------------------------------------------------------------------


def alternate(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best (minimum) seconds of each function, run in turn round after round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# -- training speed ------------------------------------------------------------------------------


def bench_train(quick: bool) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from datadiet.kernels.hf_checkpoint import hf_state_dict
    from datadiet.kernels.model import Llama, LlamaConfig
    from datadiet.pipeline.models.tokenizer import load_tokenizer

    batch, seq = 4, 256
    tok = load_tokenizer(None)
    text = (DATA / "lm" / "tinyshakespeare.txt").read_text()[:200_000]
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    n_blocks = (len(ids) - 1) // seq
    blocks = torch.stack([ids[i * seq : i * seq + seq + 1] for i in range(n_blocks)])

    cfg = LlamaConfig.preset("small", vocab_size=VOCAB)
    torch.manual_seed(0)
    ours = Llama(cfg).train()
    hf_cfg = {k: v for k, v in cfg.to_hf_config().items()
              if k not in ("architectures", "model_type", "dtype")}
    hf = LlamaForCausalLM._from_config(HFConfig(**hf_cfg), attn_implementation="sdpa").train()
    missing, unexpected = hf.load_state_dict(hf_state_dict(ours), strict=False)
    hf.tie_weights()
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"weight transfer failed: {missing} {unexpected}")
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=3e-4, weight_decay=0.1)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=3e-4, weight_decay=0.1)
    state = {"ours": 0, "hf": 0}

    def batch_at(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = blocks[torch.arange(i * batch, (i + 1) * batch) % n_blocks]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def step_ours() -> float:
        x, y = batch_at(state["ours"])
        state["ours"] += 1
        loss = ours(x, y).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss.item()

    def step_hf() -> float:
        x, y = batch_at(state["hf"])
        state["hf"] += 1
        loss = hf(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return loss.item()

    first = step_ours(), step_hf()  # also the warm-up
    if abs(first[0] - first[1]) > 1e-3:
        raise RuntimeError(f"first-step losses differ (ours {first[0]}, hf {first[1]})")
    steps = 2 if quick else 3
    best = alternate({"ours": lambda: [step_ours() for _ in range(steps)],
                      "hf": lambda: [step_hf() for _ in range(steps)]}, 3 if quick else 5)
    tokens = steps * batch * seq
    res = {
        "train_tokens_per_s": tokens / best["ours"],
        "train_tokens_per_s_hf": tokens / best["hf"],
        "train_speed_vs_hf": best["hf"] / best["ours"],
        "train_first_loss_diff": abs(first[0] - first[1]),
    }
    print(f"train: datadiet {res['train_tokens_per_s']:.0f} tok/s, transformers "
          f"{res['train_tokens_per_s_hf']:.0f} tok/s, x{res['train_speed_vs_hf']:.2f}", flush=True)
    return res


# -- generation speed and logits -------------------------------------------------------------


def bench_generate(quick: bool) -> dict[str, Any]:
    import torch

    from datadiet.kernels.hf_checkpoint import load_llama
    from datadiet.pipeline.models.loading import load_causal_lm, resolve_causal_lm
    from datadiet.pipeline.stages.inference import Generator

    hf, tok = load_causal_lm(None, "cpu")
    folder = resolve_causal_lm(None)

    # logits on real text, with the plain (unpacked) model
    plain = load_llama(folder).eval()
    text = (DATA / "lm" / "doyle_adventures.txt").read_text()[20_000:22_000]
    ids = tok(text, return_tensors="pt").input_ids[:, :128]
    with torch.inference_mode():
        diff = (plain(ids).logits - hf(ids).logits.float()).abs().max().item()
    del plain
    print(f"smollm2 max |logit diff| over {ids.shape[1]} tokens: {diff:.2e}", flush=True)

    gen = Generator(folder, tok, batch_size=len(PROMPTS))
    new = 16 if quick else 48
    res: dict[str, Any] = {"smollm2_max_logit_diff": diff, "generate_new_tokens": new}
    tok.padding_side = "left"
    for label, prompts in (("", PROMPTS), ("_batch1", PROMPTS[:1])):
        enc = tok(prompts, return_tensors="pt", padding=True)

        def run_hf(enc: Any = enc) -> Any:
            with torch.inference_mode():
                return hf.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)

        def run_ours(prompts: list[str] = prompts) -> Any:
            return gen.generate(prompts, new, stop_token_ids=[])

        ref, got = run_hf(), run_ours()  # warm-up, and a check of the wiring
        same = sum(
            got[i].token_ids[:8] == ref[i, enc.input_ids.shape[1] :][:8].tolist()
            for i in range(len(prompts))
        )
        best = alternate({"ours": run_ours, "hf": run_hf}, 2 if quick else 4)
        n = len(prompts) * new
        res[f"generate_tokens_per_s{label}"] = n / best["ours"]
        res[f"generate_tokens_per_s_hf{label}"] = n / best["hf"]
        res[f"generate_speed_vs_hf{label}"] = best["hf"] / best["ours"]
        res[f"generate_same_first8{label}"] = f"{same}/{len(prompts)}"
        print(f"generate batch {len(prompts)}: datadiet {n / best['ours']:.1f} tok/s, "
              f"transformers {n / best['hf']:.1f} tok/s, x{best['hf'] / best['ours']:.2f} "
              f"(first 8 tokens equal in {same}/{len(prompts)})", flush=True)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flce-worker", choices=["fused", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flce_worker:
        flce_worker(args.flce_worker, TOKENS, args.threads)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"threads": args.threads, "quick": args.quick}
    result.update(bench_flce_memory(args.threads))
    result.update(bench_train(args.quick))
    result.update(bench_generate(args.quick))
    result["seconds"] = time.perf_counter() - t0
    keys = ["flce_mem_ratio", "train_speed_vs_hf", "generate_speed_vs_hf", "smollm2_max_logit_diff"]
    ordered = {k: result.pop(k) for k in keys} | result
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in ordered.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
