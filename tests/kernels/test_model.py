"""datadiet's Llama: matches transformers on SmolLM2, trains, and decodes through its KV cache."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datadiet.kernels.hf_checkpoint import load_llama, write_llama_files
from datadiet.kernels.model import KVCache, Llama, LlamaConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core box OpenMP barriers under load cost more than the
    second core gives, and these shapes are small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**overrides: object) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig.preset("tiny", **overrides)).eval()


# -- SmolLM2 against transformers ------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> tuple[Llama, object, object]:
    from datadiet.pipeline.models.loading import (
        ModelNotAvailableError,
        load_causal_lm,
        resolve_causal_lm,
    )

    try:
        folder = resolve_causal_lm(None)
    except ModelNotAvailableError as exc:  # e.g. a GPU box that only has torch + transformers
        pytest.skip(f"SmolLM2 is not installed here: {exc}")
    hf, tok = load_causal_lm(None, "cpu")
    ours = load_llama(folder).eval()
    return ours, hf, tok


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2: tuple, request: pytest.FixtureRequest) -> None:
    ours, hf, tok = smollm2  # skips first where SmolLM2 is not installed (a GPU box)
    shared_data: Path = request.getfixturevalue("shared_data")
    text = (shared_data / "lm" / "doyle_adventures.txt").read_text()[20_000:21_500]
    ids = tok(text, return_tensors="pt").input_ids[:, :96]
    with torch.inference_mode():
        ref = hf(ids).logits.float()
        got = ours(ids).logits
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-3
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.slow
def test_smollm2_padded_batch_and_loss_match_transformers(smollm2: tuple) -> None:
    ours, hf, tok = smollm2
    tok.padding_side = "left"
    enc = tok(["It was a dark and stormy night; the rain fell in torrents",
               "Holmes said"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref = hf(**enc).logits.float()
        got = ours(enc.input_ids, attention_mask=enc.attention_mask).logits
        real = enc.attention_mask.bool()
        assert (got - ref).abs()[real].max().item() < 1e-3
        ids = enc.input_ids[:1]
        loss = ours(ids[:, :-1], ids[:, 1:]).loss
        ref_loss = hf(ids, labels=ids).loss
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-4)


def test_shape_feeds_the_ledger() -> None:
    from datadiet.pipeline.ledger import ModelShape

    cfg = LlamaConfig.preset("smollm2-135m")
    shape = cfg.shape()
    assert isinstance(shape, ModelShape)
    # SmolLM2-135M: 30 layers of attention + SwiGLU, plus the tied output projection
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536
    assert shape.matmul_params == 30 * per_layer + 576 * 49152
    assert shape.flops_per_token(128, training=True) == pytest.approx(
        6 * shape.matmul_params + 12 * 30 * 576 * 128
    )


def test_from_hf_config_roundtrip(tmp_path: Path) -> None:
    cfg = LlamaConfig.preset("tiny", vocab_size=300)
    again = LlamaConfig.from_hf_config(cfg.to_hf_config())
    assert again.to_dict() == cfg.to_dict() | {"head_dim": cfg.d_head}  # written out explicitly
    with pytest.raises(ValueError, match="unknown model preset"):
        LlamaConfig.preset("huge")
    with pytest.raises(ValueError, match="RoPE scaling"):
        LlamaConfig.from_hf_config(cfg.to_hf_config() | {"rope_parameters": {"rope_type": "yarn"}})


# -- tiny model: forward, backward, saving ---------------------------------------------------


def test_tiny_forward_backward() -> None:
    model = tiny().train()
    ids = torch.randint(0, 320, (3, 33))
    out = model(ids[:, :-1], ids[:, 1:])
    assert out.logits is None  # training never builds [tokens, vocab] logits
    assert out.loss.item() == pytest.approx(math.log(320), abs=0.3)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.lm_head.weight is model.embed.weight  # tied

    # the fused loss equals cross-entropy over materialised logits
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
        ref = F.cross_entropy(logits.reshape(-1, 320), ids[:, 1:].reshape(-1))
        assert model(ids[:, :-1], ids[:, 1:]).loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_ignore_index_and_untied_head() -> None:
    model = tiny(tie_embeddings=False)
    assert model.lm_head.weight is not model.embed.weight
    ids = torch.randint(0, 320, (2, 17))
    targets = ids[:, 1:].clone()
    targets[:, :8] = -100
    with torch.no_grad():
        loss = model(ids[:, :-1], targets).loss
        logits = model(ids[:, :-1]).logits
    ref = F.cross_entropy(logits.reshape(-1, 320), targets.reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_save_pretrained_loads_in_transformers(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    model = tiny()
    folder = write_llama_files(model, tmp_path / "m")
    ids = torch.randint(0, 320, (2, 20))
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    again = load_llama(folder).eval()
    with torch.no_grad():
        ref = model(ids).logits
        assert (hf(ids).logits - ref).abs().max().item() < 1e-4
        assert torch.equal(again(ids).logits, ref)


# -- KV cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [64, None], ids=["static", "growing"])
def test_kv_cache_decode_equals_full_recompute(capacity: int | None) -> None:
    model = tiny()
    ids = torch.randint(0, 320, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding on the second row
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = model.new_cache(2, capacity)
        start_capacity = cache.capacity
        steps = [model(ids[:, :12], kv_cache=cache, attention_mask=mask[:, :12]).logits]
        for t in range(12, 40):
            steps.append(model(ids[:, t : t + 1], kv_cache=cache).logits)
    inc = torch.cat(steps, dim=1)
    real = mask.bool()
    assert (inc - full).abs()[real].max().item() < 1e-4
    assert cache.length == 40
    if capacity is None:  # growing: started at 64 slots for 40 positions, so no growth needed
        assert cache.capacity == start_capacity


def test_growing_cache_doubles() -> None:
    model = tiny()
    ids = torch.randint(0, 320, (1, 150))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(1, None)
        first = cache.capacity
        parts = [model(ids[:, :100], kv_cache=cache).logits]
        parts += [model(ids[:, t : t + 1], kv_cache=cache).logits for t in range(100, 150)]
    assert cache.capacity > first
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-4


def test_kv_cache_chunked_prefill_and_reorder() -> None:
    model = tiny()
    ids = torch.randint(0, 320, (3, 24))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(3, 32)
        a = model(ids[:, :10], kv_cache=cache).logits
        b = model(ids[:, 10:20], kv_cache=cache).logits  # a multi-token step over a prefix
        cache.reorder(torch.tensor([0, 2]))  # drop row 1, as generation does when it stops
        c = model(ids[[0, 2], 20:], kv_cache=cache).logits
    assert (torch.cat([a, b], 1) - full[:, :20]).abs().max().item() < 1e-4
    assert (c - full[[0, 2], 20:]).abs().max().item() < 1e-4


def test_static_cache_overflow_is_an_error() -> None:
    model = tiny()
    cache = KVCache(model.config, 1, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="static KV cache"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_packed_inference_layout_keeps_logits() -> None:
    torch.manual_seed(1)
    model = Llama(LlamaConfig.preset("tiny", d_model=256, n_heads=4, n_kv_heads=2, d_ff=512))
    model.eval()
    ids = torch.randint(0, 320, (4, 9))
    with torch.no_grad():
        ref = model(ids).logits
        step_ref = model(ids[:, :1]).logits
        model.pack_for_inference()
        got = model(ids).logits
        step = model(ids[:, :1]).logits  # 4 rows: the prepacked small-batch path
        one = model(ids[:1, :1]).logits  # 1 row: the column-major path
    assert (got - ref).abs().max().item() < 1e-4
    assert (step - step_ref).abs().max().item() < 1e-4
    assert (one - step_ref[:1]).abs().max().item() < 1e-4
    model.train()  # training drops the packed copies and restores row-major weights
    assert all(p.is_contiguous() for p in model.parameters())


def test_tiny_model_on_the_triton_kernels(kernel_device: torch.device) -> None:
    """The model's calls into the kernels (strided gate/up views, per-row RoPE tables, the fused
    residual norm, the fused loss) work on the Triton path and agree with the references."""
    from datadiet.kernels import ops

    model = tiny().to(kernel_device).train()
    ids = torch.randint(0, 320, (2, 9), device=kernel_device)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0

    def run(backend: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with ops.use_backend(backend):
            loss = model(ids[:, :-1], ids[:, 1:]).loss
            loss.backward()
            with torch.no_grad():
                logits = model(ids, attention_mask=mask).logits  # per-row positions
        return loss.detach(), logits, [p.grad.clone() for p in model.parameters()]

    ref_loss, ref_logits, ref_grads = run("torch")
    loss, logits, grads = run("triton")
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
