"""Analytic FLOPs of a dense decoder, from its shape (PaLM appendix B, as nanoGPT does).

Why here and not in the ledger: the model owns its arithmetic, and ``kernels/`` imports nothing
from the rest of datadiet, so the formula lives beside the model and the ledger reuses it.

* training:  ``6·N + 12·L·d_attn·T`` per token
* inference: ``2·N +  4·L·d_attn·T`` per token

``N`` counts the parameters that take part in a matmul for every token (layer weights and the
output projection; the embedding lookup is free), ``L`` layers, ``d_attn = n_heads·head_dim``,
``T`` the context attended over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelShape"]


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a Llama-style decoder that the FLOP formula needs."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    head_dim: int | None = None
    mlp_matrices: int = 3  # SwiGLU has gate, up, down; a BERT/GPT-2 MLP has two
    has_output_projection: bool = True  # a causal LM's lm_head; an embedder has none

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.d_head

    @property
    def matmul_params(self) -> int:
        """Parameters touched by a matmul per token: layers plus the output projection."""
        d, dh = self.d_model, self.d_head
        attn = d * self.n_heads * dh * 2 + d * self.n_kv_heads * dh * 2  # q, o, k, v
        mlp = self.mlp_matrices * d * self.d_ff
        head = d * self.vocab_size if self.has_output_projection else 0
        return self.n_layers * (attn + mlp) + head

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        """Read a transformers config (Llama, Mistral, Qwen, BERT, GPT-2-like names)."""
        get = lambda *names, default=None: next(  # noqa: E731
            (getattr(config, n) for n in names if getattr(config, n, None) is not None), default
        )
        d_model = get("hidden_size", "n_embd", "d_model")
        n_heads = get("num_attention_heads", "n_head")
        return cls(
            n_layers=get("num_hidden_layers", "n_layer"),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads", default=n_heads),
            d_ff=get("intermediate_size", "n_inner", default=4 * d_model),
            vocab_size=get("vocab_size"),
            head_dim=get("head_dim", default=None),
            mlp_matrices=2 if getattr(config, "hidden_act", "silu") in ("gelu", "gelu_new", "relu") else 3,
            has_output_projection=not getattr(config, "is_encoder", False)
            and getattr(config, "model_type", "") not in ("bert", "roberta", "mpnet", "xlm-roberta"),
        )

    def flops_per_token(self, context: int, training: bool) -> float:
        """FLOPs for one token attending over ``context`` positions."""
        if training:
            return 6.0 * self.matmul_params + 12.0 * self.n_layers * self.d_attn * context
        return 2.0 * self.matmul_params + 4.0 * self.n_layers * self.d_attn * context

    def flops(self, tokens: int, context: int, training: bool) -> float:
        return float(tokens) * self.flops_per_token(context, training)
