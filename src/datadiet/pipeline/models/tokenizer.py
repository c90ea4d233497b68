"""Tokenizers: SmolLM2's (offline), any Hugging Face one, or raw bytes.

Why one loader: training, inference, generation and the demo must tokenize the same way, and a
run's model folder records which tokenizer it used (a byte tokenizer leaves a marker file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datadiet.pipeline.atomic import atomic_path
from datadiet.pipeline.models.loading import (
    DEFAULT_CAUSAL_LM,
    ModelNotAvailableError,
    resolve_causal_lm,
)

__all__ = ["BYTE_TOKENIZER_FILE", "ByteTokenizer", "RustTokenizer", "load_rust_tokenizer",
           "load_tokenizer", "tokenizer_hash", "train_bpe_tokenizer"]

BYTE_TOKENIZER_FILE = "datadiet_tokenizer.json"
END_OF_TEXT = "<|endoftext|>"


# -- tokenizers --------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255) plus an end-of-text id 256.

    Why: a from-scratch model in a unit test or a smoke run needs no 49k-row embedding matrix,
    and bytes need no vocabulary file. It mimics the few methods of a Hugging Face tokenizer
    that datadiet uses (``__call__``, ``encode``, ``decode``, ``save_pretrained``).
    """

    eos_token_id = 256
    pad_token_id = 256
    bos_token_id = None
    vocab_size = 257

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        del add_special_tokens  # bytes have no BOS; EOS is added by packing, not here
        return list(text.encode("utf-8"))

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = False, **_: Any) -> dict:
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)}
        return {"input_ids": [self.encode(t) for t in texts]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        data = bytes(i for i in ids if 0 <= i < 256)
        return data.decode("utf-8", errors="replace")

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        Path(folder, BYTE_TOKENIZER_FILE).write_text(json.dumps({"type": "bytes"}))


def load_tokenizer(spec: str | os.PathLike | None = None) -> Any:
    """``"bytes"``, a folder (HF tokenizer or a datadiet run's model folder), an id, or ``None``.

    ``None`` is SmolLM2's tokenizer (offline, via the model resolver), the sensible default for
    anything that will be compared with or fine-tuned from the default LM.
    """
    if spec is not None and str(spec).lower() in ("bytes", "byte"):
        return ByteTokenizer()
    path = resolve_causal_lm(None if spec is None else str(spec))
    if Path(path, BYTE_TOKENIZER_FILE).exists():
        return ByteTokenizer()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"{path}: not a tokenizer folder transformers can load "
                                     f"({exc})") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class RustTokenizer:
    """The Rust ``tokenizers.Tokenizer`` behind a fast tokenizer, with its end-of-text id.

    Why: a batch job that only encodes (``datadiet export``) needs neither ``transformers`` nor
    the ``torch`` it imports: loading SmolLM2's tokenizer through ``AutoTokenizer`` costs about
    4 CPU-seconds and 450 MiB, its ``tokenizer.json`` read directly a tenth of a second.
    """

    backend: Any
    eos_token_id: int
    name: str

    def __len__(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))


def _eos_of(folder: Path, backend: Any) -> int | None:
    """The end-of-text id that ``tokenizer_config.json`` names, if it names one in the vocab."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    eos = config.get("eos_token") if isinstance(config, dict) else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return backend.token_to_id(eos) if isinstance(eos, str) else None


def load_rust_tokenizer(spec: str | os.PathLike | None = None) -> RustTokenizer | ByteTokenizer:
    """The tokenizer :func:`load_tokenizer` would load, as its Rust tokenizer: read from the
    folder's ``tokenizer.json`` where it has one (and an end-of-text token in its config),
    else from what ``load_tokenizer`` loads."""
    if spec is not None and str(spec).lower() in ("bytes", "byte"):
        return ByteTokenizer()
    name = str(spec) if spec is not None else os.environ.get("DATADIET_LM", DEFAULT_CAUSAL_LM)
    folder = Path(resolve_causal_lm(None if spec is None else str(spec)))
    if (folder / BYTE_TOKENIZER_FILE).exists():
        return ByteTokenizer()
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        eos = _eos_of(folder, backend)
        if eos is not None:
            return RustTokenizer(backend, eos, name)
    tok = load_tokenizer(spec)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or tok.eos_token_id is None:
        raise ValueError(f"{name}: not a fast (Rust) tokenizer with an end-of-text token")
    return RustTokenizer(backend, int(tok.eos_token_id), name)


def tokenizer_hash(tok: Any) -> str:
    """What a tokenizer *is* (its vocabulary, merges, normalizer and rules), whichever way it
    was loaded: xxh3-128 of the Rust tokenizer's JSON; ``"bytes"`` for :class:`ByteTokenizer`.
    Token files record it, so a run never reads ids made by another tokenizer."""
    if isinstance(tok, ByteTokenizer):
        return "bytes"
    backend = tok.backend if isinstance(tok, RustTokenizer) else tok.backend_tokenizer
    import xxhash  # as in model_folder_hash: model stages import on a box without it

    return xxhash.xxh3_128_hexdigest(backend.to_str().encode())


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int,
                        folder: str | os.PathLike) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and save it where :func:`load_tokenizer`
    reads it; return the folder.

    Why: a from-scratch model of a few million parameters cannot afford SmolLM2's 49 152-row
    output layer (it would hold most of the FLOPs), and raw bytes spend the early training on
    spelling that every English source shares. A vocabulary of a thousand or so merges fitted
    to the corpus keeps the output layer small while tokens stay word-like. The end-of-text
    token is ``<|endoftext|>`` (SmolLM2's name for it).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (the bytes and end-of-text), got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_OF_TEXT,
                                        pad_token=END_OF_TEXT)
    folder = Path(folder)
    with atomic_path(folder, is_dir=True) as tmp:
        tokenizer.save_pretrained(tmp)
    return folder
