"""The one LM scorer on both backends, pinned to plain transformers on real text.

The reference is computed independently of datadiet's loaders and scorer: ``transformers``'
``AutoModelForCausalLM`` on the converted SmolLM2 folder, one text at a time, full logits and
``torch.log_softmax``. Three short Sherlock Holmes sentences keep the file fast on two cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datadiet.kernels.hf_checkpoint import write_llama_files
from datadiet.kernels.model import Llama, LlamaConfig
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models import scoring
from datadiet.pipeline.models.loading import resolve_causal_lm
from datadiet.pipeline.models.scoring import LMScorer, choose_backend

BACKENDS = ("llama", "transformers")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    raw = (shared_data / "lm" / "doyle_adventures.txt").read_text(encoding="utf-8")
    paras = [" ".join(p.split()) for p in raw.split("\n\n")]
    short = [p for p in paras if 60 < len(p) < 160]
    return [short[0], short[3], short[7][:40]]


@pytest.fixture(scope="module")
def reference(texts: list[str]) -> list[np.ndarray]:
    """``log p(token_i | prefix)`` from a plain transformers forward, one text at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_causal_lm(None)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for text in texts:
        ids = torch.tensor([[tok.eos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0, :-1]
        out.append(logp.gather(-1, ids[0, 1:, None]).squeeze(-1).numpy())
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def scorer(request: pytest.FixtureRequest) -> LMScorer:
    return LMScorer(backend=request.param, max_length=128, ledger=Ledger())


def test_auto_picks_datadiets_llama_for_smollm2(tmp_path: Path) -> None:
    assert LMScorer(max_length=64).backend == "llama"
    tiny = tmp_path / "tiny"
    write_llama_files(Llama(LlamaConfig.preset("tiny")), tiny)
    assert choose_backend(__import__("json").loads((tiny / "config.json").read_text())) == "llama"
    gpt2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100}
    assert choose_backend(gpt2) == "transformers"
    biased = {**LlamaConfig.preset("tiny").to_hf_config(), "attention_bias": True}
    assert choose_backend(biased) == "transformers"  # datadiet's Llama has no biases


@pytest.mark.slow
def test_token_logprobs_match_plain_transformers(scorer, texts, reference) -> None:
    got = scorer.token_logprobs(texts)  # one padded batch of three lengths
    for scores, ref in zip(got, reference, strict=True):
        assert scores.logprobs.shape == ref.shape
        np.testing.assert_allclose(scores.logprobs, ref, atol=1e-4, rtol=0)
    rec = scorer.ledger.stages["lm-scoring"]
    n = [len(r) + 1 for r in reference]
    assert rec.tokens == sum(n)
    assert rec.flops == pytest.approx(sum(scorer.shape.flops(k, k, training=False) for k in n))


@pytest.mark.slow
def test_log_softmax_chunks_do_not_change_values(scorer, texts, reference, monkeypatch) -> None:
    monkeypatch.setattr(scoring, "LOGIT_CHUNK_ELEMENTS", 7 * scorer._runner.vocab_size)
    assert scorer._chunk_rows == 7  # three texts of 10-40 tokens: many chunks, one ragged
    for got, ref in zip(scorer.score_ids(_ids(scorer, texts)), reference, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_starts_skip_positions_without_changing_the_rest(scorer, texts, reference) -> None:
    """Scoring from a later position (logits only where asked) gives the same values."""
    starts = [5, 0, 3]
    got = scorer.score_ids(_ids(scorer, texts), starts=starts)
    for g, ref, s in zip(got, reference, starts, strict=True):
        np.testing.assert_allclose(g, ref[s:], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_kv_cache_path_equals_no_cache_path(scorer, texts, reference) -> None:
    """Two rows of different lengths, left-padded prefix, right-padded rest, one shared cache."""
    seqs = [ids for ids in _ids(scorer, texts[:2])]
    cut = [6, 9]  # prefix lengths; the rest is scored through the cache
    b, pad = 2, int(scorer.tokenizer.pad_token_id)
    p_width = max(cut)
    ids = torch.full((b, p_width), pad)
    mask = torch.zeros((b, p_width), dtype=torch.long)
    pos = torch.zeros((b, p_width), dtype=torch.long)
    for r, (s, c) in enumerate(zip(seqs, cut, strict=True)):
        ids[r, p_width - c :] = torch.tensor(s[:c])
        mask[r, p_width - c :] = 1
        pos[r, p_width - c :] = torch.arange(c)
    first, last, cache = scorer.logprobs_with_cache(
        ids, attention_mask=mask, position_ids=pos, score_from=0, last_cols=[p_width - 1] * b
    )
    rest = [s[c:] for s, c in zip(seqs, cut, strict=True)]
    width = max(len(r) for r in rest)
    ids2 = torch.full((b, width), pad)
    mask2 = torch.zeros((b, width), dtype=torch.long)
    pos2 = torch.zeros((b, width), dtype=torch.long)
    for r, (tail, c) in enumerate(zip(rest, cut, strict=True)):
        ids2[r, : len(tail)] = torch.tensor(tail)
        mask2[r, : len(tail)] = 1
        pos2[r, : len(tail)] = torch.arange(c, c + len(tail))
    second, _, _ = scorer.logprobs_with_cache(
        ids2, attention_mask=torch.cat([mask, mask2], dim=1), position_ids=pos2,
        past_key_values=cache, score_from=0,
    )
    for r, (ref, c, tail) in enumerate(zip(reference[:2], cut, rest, strict=True)):
        in_prefix = first[r, p_width - c : p_width - 1].numpy()  # log p(tokens 1..c-1)
        boundary = last[r, tail[0]].item()  # the cut token, from the prefix's last column
        in_rest = second[r, : len(tail) - 1].numpy()
        got = np.concatenate([in_prefix, [boundary], in_rest])
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cached_tokens_masked_later_are_ignored(scorer) -> None:
    """A token masked out of the cache after the fact (compression drops it) is invisible:
    the next call scores as if it had never been fed, positions kept as given. (The dropped
    token is the last one fed, so no other cached entry was computed with it in view.)"""
    ids = _ids(scorer, ["Holmes looked at the letter and said nothing at all."])[0]
    n = 8  # feed ids[:n] with the cache, then mask ids[n - 1] out and feed the rest
    drop = n - 1
    kept = ids[:drop] + ids[drop + 1 :]
    kept_pos = list(range(drop)) + list(range(drop + 1, len(ids)))
    _, _, cache = scorer.logprobs_with_cache(
        torch.tensor([ids[:n]]), attention_mask=torch.ones((1, n), dtype=torch.long),
        position_ids=torch.arange(n)[None], score_from=n - 1,
    )
    seen = torch.ones((1, n), dtype=torch.long)
    seen[0, drop] = 0
    tail = ids[n:]
    after, _, _ = scorer.logprobs_with_cache(
        torch.tensor([tail]), attention_mask=torch.cat([seen, torch.ones((1, len(tail)),
                                                                         dtype=torch.long)], 1),
        position_ids=torch.arange(n, len(ids))[None], past_key_values=cache, score_from=0,
    )
    direct, _, _ = scorer.logprobs_with_cache(
        torch.tensor([kept]), attention_mask=torch.ones((1, len(kept)), dtype=torch.long),
        position_ids=torch.tensor([kept_pos]), score_from=0,
    )
    np.testing.assert_allclose(after[0].numpy(), direct[0, n - 1 :].numpy(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_continuations_after_a_shared_prompt(scorer) -> None:
    prompt = "Holmes took the letter, read it twice, and said that the"
    options = [" client was lying", " weather", ""]
    got = scorer.continuation_logprobs(prompt, options)
    for option, lp in zip(options[:2], got[:2], strict=True):
        seq = _ids(scorer, [prompt + option])[0]
        full = scorer.score_ids([seq])[0]
        assert len(lp) == len(seq) - len(_ids(scorer, [prompt])[0]) > 0
        np.testing.assert_allclose(lp, full[-len(lp) :], atol=1e-4, rtol=0)
    assert got[2].shape == (0,)


def test_llama_logits_to_keep_equals_full_logits() -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig.preset("tiny")).eval()
    ids = torch.randint(0, 320, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        last3 = model(ids, attention_mask=mask, logits_to_keep=3).logits
        picked = model(ids, attention_mask=mask, logits_to_keep=torch.tensor([0, 4, 7])).logits
        hidden = model(ids, attention_mask=mask, logits_to_keep=2, return_hidden=True).hidden
    torch.testing.assert_close(last3, full[:, -3:])
    torch.testing.assert_close(picked, full[:, [0, 4, 7]])
    torch.testing.assert_close(model.lm_head(hidden), full[:, -2:])


def _ids(scorer: LMScorer, texts: list[str]) -> list[list[int]]:
    return [e["ids"] for e in scorer.encode(texts)]
