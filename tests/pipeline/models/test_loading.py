"""Model loading: offline defaults work, a missing model is a clear error, not a hang."""

from __future__ import annotations

import numpy as np
import pytest

from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.loading import (
    ModelNotAvailableError,
    load_causal_lm,
    resolve_embedder,
)


def test_unknown_model_offline_names_what_to_do() -> None:
    with pytest.raises(ModelNotAvailableError, match="neither a local folder nor in the Hugging Face cache"):
        load_causal_lm("some-org/not-a-real-model-xyz")


def test_default_lm_is_tied_and_sane(wiki_paragraphs: list[str]) -> None:
    """The GGUF conversion must tie lm_head: an untied random head gives perplexity ~50k."""
    from datadiet.pipeline.models.scoring import LMScorer

    hf, _ = load_causal_lm(None, "cpu")
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ledger = Ledger()
    scorer = LMScorer(ledger=ledger, max_length=128)  # datadiet's Llama on the same folder
    assert scorer.model.lm_head.weight.data_ptr() == scorer.model.embed.weight.data_ptr()
    ppl = scorer.perplexity(wiki_paragraphs[:4])
    assert np.all(ppl < 200), ppl
    rec = ledger.stages["lm-scoring"]
    assert rec.tokens > 4 * 60 and rec.flops > 2 * 100e6 * rec.tokens


def test_scorer_batching_does_not_change_scores(wiki_paragraphs: list[str]) -> None:
    from datadiet.pipeline.models.scoring import LMScorer

    scorer = LMScorer(max_length=96, tokens_per_batch=200)
    texts = [wiki_paragraphs[0], "A short one.", wiki_paragraphs[1][:150]]
    together = scorer.nll(texts)
    alone = np.array([scorer.nll([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    cond = scorer.conditional_nll(["Question: what is two plus two? Answer:"] * 2, [" four", " purple"])
    assert cond[0] < cond[1]


def test_embedder_cache_hits_and_similarity(tmp_path, wiki_paragraphs: list[str]) -> None:
    from datadiet.pipeline.models.embedding import Embedder

    ledger = Ledger()
    emb = Embedder(cache_dir=tmp_path, ledger=ledger)
    texts = [wiki_paragraphs[0], wiki_paragraphs[0].upper(), "A recipe for tomato soup."]
    first = emb.encode(texts)
    tokens_after_first = ledger.total.tokens
    second = Embedder(cache_dir=tmp_path, ledger=ledger).encode(texts)
    np.testing.assert_array_equal(first, second)
    assert ledger.total.tokens == tokens_after_first  # cache hits cost nothing
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first[0] @ first[1] > first[0] @ first[2]
    assert resolve_embedder().endswith("model")


def test_embedder_cache_is_keyed_by_the_model_loaded(tmp_path, monkeypatch, wiki_paragraphs) -> None:
    """``$DATADIET_EMBEDDER`` naming another model must not be served MiniLM's cached vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    from datadiet.pipeline.models.embedding import Embedder

    texts = [wiki_paragraphs[2][:200], "A recipe for tomato soup."]
    cache = tmp_path / "cache"
    minilm = Embedder(cache_dir=cache)
    first = minilm.encode(texts)
    other = SentenceTransformer(resolve_embedder(), device="cpu")  # MiniLM with other weights
    with torch.no_grad():
        other[0].auto_model.encoder.layer[0].output.dense.weight.mul_(0.5)
    other.save(str(tmp_path / "other"))
    monkeypatch.setenv("DATADIET_EMBEDDER", str(tmp_path / "other"))
    swapped = Embedder(cache_dir=cache)  # asked for "the default", loads the other model
    assert swapped.model_id != minilm.model_id
    assert swapped.model_id.startswith(str(tmp_path / "other") + "@")
    got = swapped.encode(texts)
    assert swapped.misses == 2 and swapped.hits == 0
    expected = other.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - first).max() > 1e-2
    assert len(list(cache.glob("*.sqlite"))) == 2


def test_embedding_flops_count_the_truncated_input(wiki_paragraphs) -> None:
    from datadiet.pipeline.models.embedding import Embedder

    ledger = Ledger()
    emb = Embedder(cache=False, ledger=ledger)
    long_text = " ".join(wiki_paragraphs[:6])
    limit = emb.model.max_seq_length
    full = len(emb.model.tokenizer(long_text)["input_ids"])
    assert full > limit  # the model reads only its first ``limit`` tokens
    emb.encode([long_text, "short"])
    rec = ledger.stages["embedding"]
    short = len(emb.model.tokenizer("short")["input_ids"])
    assert rec.tokens == limit + short
    assert rec.flops == pytest.approx(emb.shape.flops(limit, limit, training=False)
                                      + emb.shape.flops(short, short, training=False))
    assert ledger.stages["model-loading"].parent is None
