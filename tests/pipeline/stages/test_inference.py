"""Inference on datadiet's Llama: greedy equals transformers, batching is invisible, sampling
is seeded, scoring matches, and every call lands in the ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datadiet.kernels.model import Llama, LlamaConfig
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.tokenizer import ByteTokenizer
from datadiet.pipeline.stages.inference import Generator, sample_next

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):",
    "Sherlock Holmes looked at me and said",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def smollm2() -> tuple[Generator, object, object]:
    from datadiet.pipeline.models.loading import load_causal_lm

    hf, tok = load_causal_lm(None, "cpu")
    return Generator(None, batch_size=8), hf, tok


@pytest.fixture(scope="module")
def tiny_gen() -> Generator:
    torch.manual_seed(0)
    model = Llama(LlamaConfig.preset("tiny", eos_token_id=256, pad_token_id=256))
    return Generator(model, ByteTokenizer(), ledger=Ledger("tiny"))


@pytest.mark.slow
def test_greedy_equals_transformers_generate(smollm2: tuple) -> None:
    gen, hf, tok = smollm2
    for prompt in PROMPTS[:3]:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            ref = hf.generate(**enc, max_new_tokens=20, do_sample=False)[0, enc.input_ids.shape[1]:]
        ours = gen.generate([prompt], 20)[0]
        assert ours.token_ids == ref.tolist(), prompt  # HF stops at EOS too
        assert ours.text == tok.decode(ref, skip_special_tokens=True)


@pytest.mark.slow
def test_batched_equals_unbatched(smollm2: tuple) -> None:
    gen = smollm2[0]
    batched = gen.generate(PROMPTS, 16, stop_token_ids=[])
    for prompt, out in zip(PROMPTS, batched, strict=True):
        assert gen.generate([prompt], 16, stop_token_ids=[])[0].token_ids == out.token_ids
        assert out.finish_reason == "length" and len(out.token_ids) == 16


@pytest.mark.slow
def test_chat_prompt_stops_at_end_of_turn(smollm2: tuple) -> None:
    gen, _, tok = smollm2
    out = gen.generate(["What is 2+2? Answer with one number."], 40, chat=True)[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] == tok.eos_token_id
    assert "4" in out.text


@pytest.mark.slow
def test_score_matches_transformers_log_probs(smollm2: tuple) -> None:
    gen, hf, tok = smollm2
    texts = ["The quick brown fox jumps over the lazy dog.", "To be, or not to be"]
    scores = gen.score(texts)
    for text, got in zip(texts, scores, strict=True):
        ids = torch.tensor([[tok.eos_token_id, *tok.encode(text, add_special_tokens=False)]])
        with torch.inference_mode():
            logp = hf(ids).logits.float().log_softmax(-1)[0, :-1]
        ref = logp.gather(-1, ids[0, 1:, None]).squeeze(-1).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-3
    totals = gen.score_completions(["The capital of France is"] * 2, [" Paris", " banana"])
    assert totals[0] > totals[1]


def test_sampling_is_seeded(tiny_gen: Generator) -> None:
    kw = dict(do_sample=True, temperature=1.0, top_p=0.95, stop_token_ids=[])
    a = tiny_gen.generate(["abc", "hello"], 12, seed=7, **kw)
    b = tiny_gen.generate(["abc", "hello"], 12, seed=7, **kw)
    c = tiny_gen.generate(["abc", "hello"], 12, seed=8, **kw)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    greedy = tiny_gen.generate(["abc"], 12, stop_token_ids=[])[0].token_ids
    nucleus0 = tiny_gen.generate(["abc"], 12, do_sample=True, top_p=1e-6, seed=1,
                                 stop_token_ids=[])[0].token_ids
    assert nucleus0 == greedy  # a vanishing nucleus is the argmax


def test_sample_next_top_k_and_top_p() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    picked = sample_next(logits, do_sample=True, top_k=2, generator=g)
    assert set(picked.tolist()) == {2, 3}
    # p(3) ≈ 0.64, p(2) ≈ 0.24: top_p = 0.7 keeps exactly those two
    picked = sample_next(logits, do_sample=True, top_p=0.7, generator=g)
    assert set(picked.tolist()) == {2, 3}
    assert sample_next(logits[:1], do_sample=False).item() == 3


def test_static_and_growing_caches_agree(tiny_gen: Generator) -> None:
    growing = Generator(tiny_gen.model, tiny_gen.tokenizer, cache="growing")
    prompts = ["a", "a much longer prompt than the first one"]
    a = tiny_gen.generate(prompts, 90, stop_token_ids=[])  # > 64: the growing cache doubles
    b = growing.generate(prompts, 90, stop_token_ids=[])
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


def test_stop_tokens_end_rows_independently(tiny_gen: Generator) -> None:
    free = tiny_gen.generate(["xy", "hello world"], 10, stop_token_ids=[])
    stop = free[0].token_ids[2]  # a token the first row emits at its third step
    outs = tiny_gen.generate(["xy", "hello world"], 10, stop_token_ids=[stop])
    first = free[0].token_ids.index(stop)
    assert outs[0].token_ids == free[0].token_ids[: first + 1]
    assert outs[0].finish_reason == "stop"
    second = free[1].token_ids
    expect = second[: second.index(stop) + 1] if stop in second else second
    assert outs[1].token_ids == expect  # the other row is unaffected by the batch shrinking


def test_generation_is_recorded_in_the_ledger() -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig.preset("tiny"))
    ledger = Ledger("gen")
    gen = Generator(model, ByteTokenizer(), ledger=ledger, stage="answer")
    gen.generate(["abcd"], 5, stop_token_ids=[])
    rec = ledger.stages["answer"]
    shape = model.config.shape()
    # the 4-token prompt at context 4, then 4 fed-back tokens at contexts 5..8
    expected = shape.flops(4, 4, training=False) + sum(
        shape.flops_per_token(c, training=False) for c in range(5, 9)
    )
    assert rec.tokens == 8 and rec.extra["generated_tokens"] == 5
    assert rec.flops == pytest.approx(expected)
    assert rec.seconds > 0 and rec.peak_memory_bytes > 0
    gen.score(["hello"])
    assert ledger.stages["answer"].tokens == 8 + 6  # prefix token + 5 bytes
