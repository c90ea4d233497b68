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
