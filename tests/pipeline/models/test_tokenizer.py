"""A BPE tokenizer fitted to a corpus: loads through load_tokenizer, round-trips real text."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadiet.pipeline.models.tokenizer import load_tokenizer, train_bpe_tokenizer


def test_bpe_fitted_to_real_text_round_trips(tmp_path: Path, wiki_paragraphs: list[str]) -> None:
    folder = train_bpe_tokenizer(wiki_paragraphs[:200], 512, tmp_path / "tok")
    tok = load_tokenizer(folder)
    assert len(tok) == 512 and tok.eos_token == "<|endoftext|>"
    text = wiki_paragraphs[300]  # not seen in training
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # merges make tokens word-like
    assert "café ☃" == tok.decode(tok("café ☃", add_special_tokens=False)["input_ids"])


def test_bpe_vocab_must_cover_the_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe_tokenizer(["some text"], 100, tmp_path / "tok")
