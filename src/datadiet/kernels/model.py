"""A compact Llama built on datadiet's kernels; trains from scratch and runs Hugging Face weights.

Why a second Llama next to transformers': the training and inference stages must run on the
fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) and must never materialise the
``[tokens, vocab]`` logits during training. The same module loads SmolLM2 (or any Llama-layout
checkpoint), so one code path serves "train a small model on curated data" and "run the default
LM", and its logits are tested against transformers'.

Design choices, each for speed without changing the maths:

* q/k/v are one fused ``[H·D + 2·Hkv·D, d]`` matrix and gate/up one ``[2·d_ff, d]`` matrix: one
  GEMM instead of three (or two) per layer, which matters most in small-batch decoding where
  every extra launch and Python call shows. Loading and saving split/join the Hugging Face names.
* the residual add is fused into the following RMSNorm (``add_rms_norm``).
* grouped-query attention goes straight to ``scaled_dot_product_attention(enable_gqa=True)``;
  keys and values are never repeated in memory.
* the KV cache (:class:`KVCache`) is preallocated ("static") or grows by doubling, so decoding
  never re-copies the whole cache per token.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datadiet.kernels import ops
from datadiet.kernels.flops import ModelShape

__all__ = [
    "PRESETS",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "LlamaOutput",
]


# -- configuration -------------------------------------------------------------------------


@dataclass
class LlamaConfig:
    """The handful of numbers that define a Llama-style decoder.

    Defaults are SmolLM2-135M's. ``head_dim=None`` means ``d_model // n_heads``.
    """

    vocab_size: int = 49152
    d_model: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    d_ff: int = 1536
    head_dim: int | None = None
    max_seq_len: int = 8192
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.d_head % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.d_head}")

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def shape(self) -> ModelShape:
        """The ledger's view of this model, so every FLOP figure comes from one formula."""
        return ModelShape(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            d_ff=self.d_ff,
            vocab_size=self.vocab_size,
            head_dim=self.d_head,
        )

    # -- (de)serialisation --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaConfig:
        """Build from a dict, rejecting unknown keys so a typo in a YAML file is an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown LlamaConfig fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LlamaConfig:
        """A named configuration (``tiny``, ``small``, ``smollm2-135m``) with optional overrides."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[key], **overrides)

    @classmethod
    def from_hf_config(cls, config: Any) -> LlamaConfig:
        """Read a transformers ``LlamaConfig`` (object, dict, ``config.json`` path or folder)."""
        if isinstance(config, str | os.PathLike):
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            config = json.loads(path.read_text())
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        model_type = get("model_type", "llama")
        if model_type not in ("llama", None):
            raise ValueError(f"only Llama-layout checkpoints are supported, got {model_type!r}")
        if get("attention_bias", False) or get("mlp_bias", False):
            raise ValueError("attention/MLP biases are not supported by datadiet's Llama")
        if get("hidden_act", "silu") != "silu":
            raise ValueError(f"only SiLU (SwiGLU) MLPs are supported, got {get('hidden_act')!r}")
        # transformers >= 5 keeps RoPE settings in ``rope_parameters``; 4.x in rope_theta/rope_scaling
        rope = get("rope_parameters", None) or get("rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) if rope else "default"
        if rope_type not in ("default", None):
            raise ValueError(f"RoPE scaling {rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta") if rope else None
        theta = theta or get("rope_theta", 10000.0)
        n_heads = get("num_attention_heads")

        def first_id(value: Any) -> int | None:
            return value[0] if isinstance(value, list | tuple) and value else value

        return cls(
            vocab_size=get("vocab_size"),
            d_model=get("hidden_size"),
            n_layers=get("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=get("num_key_value_heads", None) or n_heads,
            d_ff=get("intermediate_size"),
            head_dim=get("head_dim", None),
            max_seq_len=get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            norm_eps=float(get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(get("tie_word_embeddings", True)),
            init_std=float(get("initializer_range", 0.02)),
            bos_token_id=first_id(get("bos_token_id", None)),
            eos_token_id=first_id(get("eos_token_id", None)),
            pad_token_id=first_id(get("pad_token_id", None)),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A transformers ``config.json`` dict, so saved models load in ``LlamaForCausalLM``."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "intermediate_size": self.d_ff,
            "head_dim": self.d_head,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "initializer_range": self.init_std,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
        }


PRESETS: dict[str, LlamaConfig] = {
    # Unit tests and smoke runs: trains a few hundred steps a minute on two CPU cores.
    "tiny": LlamaConfig(
        vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176,
        max_seq_len=1024, rope_theta=10000.0, norm_eps=1e-5,
    ),
    # A from-scratch model that learns real structure on a laptop in minutes.
    "small": LlamaConfig(
        vocab_size=49152, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, d_ff=688,
        max_seq_len=2048, rope_theta=10000.0, norm_eps=1e-5,
    ),
    "smollm2-135m": LlamaConfig(),
}


# -- KV cache --------------------------------------------------------------------------------


class KVCache:
    """Per-layer keys/values for incremental decoding, preallocated or grown by doubling.

    ``capacity`` given → *static*: one allocation up front (prompt + new tokens), no copies
    while decoding; ``capacity=None`` → *growing*: starts small and doubles, so the total copy
    cost stays linear in the generated length (a ``torch.cat`` per token would be quadratic).

    Every row shares one write offset (``length``), which is what left padding buys:
    ``key_mask`` marks which cached slots hold real tokens (``None`` while there is no
    padding) and ``next_pos`` is each row's next RoPE position.
    """

    def __init__(
        self,
        config: LlamaConfig,
        batch_size: int,
        capacity: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.static = capacity is not None
        self.batch_size = batch_size
        self.capacity = int(capacity) if capacity is not None else 64
        self.shape = (batch_size, config.n_kv_heads, self.capacity, config.d_head)
        self.keys = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.length = 0
        self.key_mask: Tensor | None = None
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)

    def _grow(self, needed: int) -> None:
        if self.static:
            raise ValueError(
                f"static KV cache of {self.capacity} positions cannot hold {needed}; "
                "allocate a larger capacity or use a growing cache (capacity=None)"
            )
        new_cap = max(needed, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_empty((*old.shape[:2], new_cap, old.shape[3]))
                new[:, :, : self.length] = old[:, :, : self.length]
                store[i] = new
        if self.key_mask is not None:
            mask = self.key_mask.new_zeros((self.batch_size, new_cap))
            mask[:, : self.length] = self.key_mask[:, : self.length]
            self.key_mask = mask
        self.capacity = new_cap

    def reserve(self, n_new: int, mask: Tensor | None) -> None:
        """Make room for ``n_new`` positions and record which positions hold real tokens.

        ``mask`` covers either the new tokens (``[B, n_new]``) or every cached and new position
        (``[B, length + n_new]``, transformers' convention): the wide form rewrites the record
        of the cached slots too, which is how a caller masks out tokens it has since dropped
        (iterative prompt compression) while their keys stay in the cache.
        """
        end = self.length + n_new
        if end > self.capacity:
            self._grow(end)
        if mask is None:
            if self.key_mask is not None:
                self.key_mask[:, self.length : end] = True
            return
        width = int(mask.shape[1])
        if width not in (n_new, end):
            raise ValueError(
                f"attention_mask has {width} columns; expected {n_new} (new tokens) or "
                f"{end} (cached + new)"
            )
        if self.key_mask is None:
            if bool(mask.all()):
                return
            self.key_mask = torch.ones(
                (self.batch_size, self.capacity), dtype=torch.bool, device=mask.device
            )
        self.key_mask[:, end - width : end] = mask.bool()

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys/values of ``layer``; return views over all cached positions."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_new: int, positions: Tensor) -> None:
        self.length += n_new
        self.next_pos = positions[:, -1] + 1

    def reorder(self, index: Tensor) -> None:
        """Keep only rows ``index`` (drop finished sequences from a batch)."""
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                store[i] = t.index_select(0, index)
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.batch_size = int(index.numel())

    def batch_select_indices(self, index: Tensor) -> None:
        """:meth:`reorder` under the name transformers' caches use, so code that shrinks a
        batch's cache works the same on either scoring backend."""
        self.reorder(index.to(self.next_pos.device))


# -- model -------------------------------------------------------------------------------------


class LlamaOutput(NamedTuple):
    """What :meth:`Llama.forward` returns (a tuple, so DDP and ``torch.compile`` pass it through).

    ``logits`` is ``None`` when ``targets`` were given: training never builds them.
    """

    logits: Tensor | None
    loss: Tensor | None
    hidden: Tensor | None = None


class Linear(nn.Linear):
    """``nn.Linear`` (no bias) that can carry CPU inference layouts of its weight.

    Why: small-batch decoding on CPU is bound by streaming the weights, and the default fp32
    GEMM path (MKL, ``x @ W.T`` with ``W`` row-major) reaches a fraction of the memory bandwidth
    there — measured on the project's 2-core AMD EPYC: a ``1 × 576 · 576 × 49152`` product runs
    about 1.5x faster with ``W`` stored column-major, and 2-4 rows run 2-3x faster through
    oneDNN with a prepacked weight. :meth:`pack_for_inference` sets both up (the parameter is
    re-laid out in place, the oneDNN copy costs one extra copy of the weight); the packed path is
    only taken when no gradient is needed, and :meth:`Llama.train` drops it, so training
    always sees the parameter itself.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self._packed: Tensor | None = None

    def pack_for_inference(self) -> None:
        w = self.weight
        if w.device.type != "cpu" or w.dtype != torch.float32 or w.is_meta:
            return
        if w.stride() != (1, w.shape[0]):
            # column-major storage of the same [out, in] parameter: the 1-row fast path
            w.data = w.data.t().contiguous().t()
        if _ONEDNN_LINEAR and w.shape[0] * w.shape[1] >= 1 << 16:
            try:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), 4)
            except (RuntimeError, AttributeError):  # op missing or refused: plain path
                self._packed = None

    def unpack(self) -> None:
        """Drop the packed copy and restore row-major storage (training's usual layout)."""
        self._packed = None
        if not self.weight.is_contiguous():
            self.weight.data = self.weight.data.contiguous()

    def forward(self, x: Tensor) -> Tensor:
        packed = self._packed
        if packed is not None and not (torch.is_grad_enabled() and self.weight.requires_grad):
            rows = x.numel() // x.shape[-1]
            if 1 < rows <= _ONEDNN_MAX_ROWS:
                flat = x.reshape(rows, x.shape[-1])
                out = torch.ops.mkldnn._linear_pointwise(flat, packed, None, "none", [None], "")
                return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, self.weight)


_ONEDNN_LINEAR = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
)
# Above this many rows (prefill) MKL and oneDNN run at the same speed; the packed path is a
# small-batch decoding optimisation only.
_ONEDNN_MAX_ROWS = 64
# Fused cross-entropy rows per chunk on CPU (see ``Llama.ce_chunk_size``): measured on 2 cores,
# 128+ rows run as fast as the materialising reference, 8 rows 2.5x slower.
CPU_CE_CHUNK = 256


class RMSNorm(nn.Module):
    """Holds the scale; the maths is in :func:`datadiet.kernels.ops.rms_norm`."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.d_head = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        self.q_dim = cfg.n_heads * cfg.d_head
        self.kv_dim = cfg.n_kv_heads * cfg.d_head
        self.wqkv = Linear(cfg.d_model, self.q_dim + 2 * self.kv_dim)
        self.wo = Linear(self.q_dim, cfg.d_model)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
    ) -> Tensor:
        b, t, _ = x.shape
        qkv = self.wqkv(x)
        q, k, v = qkv.split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)
        q = q.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        k = k.view(b, t, self.n_kv, self.d_head).transpose(1, 2)
        v = v.view(b, t, self.n_kv, self.d_head).transpose(1, 2)
        q, k = ops.apply_rope(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv != self.n_heads
        )
        return self.wo(out.transpose(1, 2).reshape(b, t, self.q_dim))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.d_ff = cfg.d_ff
        self.w_gate_up = Linear(cfg.d_model, 2 * cfg.d_ff)
        self.w_down = Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_gate_up(x).split(self.d_ff, dim=-1)
        return self.w_down(ops.swiglu(gate, up))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        residual: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
    ) -> tuple[Tensor, Tensor]:
        """Takes the previous block's output and the residual stream *before* adding it.

        Deferring each residual add into the next norm lets ``add_rms_norm`` fuse the two.
        """
        if residual is None:
            residual, h = x, ops.rms_norm(x, self.attn_norm.weight, self.attn_norm.eps)
        else:
            h, residual = ops.add_rms_norm(x, residual, self.attn_norm.weight, self.attn_norm.eps)
        attn = self.attn(h, cos, sin, mask, is_causal, cache)
        h, residual = ops.add_rms_norm(attn, residual, self.mlp_norm.weight, self.mlp_norm.eps)
        return self.mlp(h), residual


class Llama(nn.Module):
    """Decoder-only Llama: embeddings, ``n_layers`` blocks, final RMSNorm, (tied) LM head."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = Linear(config.d_model, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # RoPE cos/sin tables are a cache, not state: plain attributes (never cast by
        # ``.to(bfloat16)``, never broadcast by DDP), rebuilt in fp32 on the weights' device.
        self._rope_len = 0
        self.rope_cos = torch.empty(0)
        self.rope_sin = torch.empty(0)
        # Rows per fused-cross-entropy chunk; ``None`` = the kernel's default. On CPU the GEMMs of a
        # few-row chunk run far below peak (the default aims at GPU memory), so at least
        # ``CPU_CE_CHUNK`` rows per chunk are used there: 256 × 49k × 4 B = 50 MB of logits.
        self.ce_chunk_size: int | None = None
        self.reset_parameters()

    # -- initialisation -------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual-output projections scaled by 1/sqrt(2·layers).

        The scaled init (GPT-2) keeps the residual stream's variance from growing with depth,
        so a from-scratch run starts at loss ≈ ln(vocab) and does not spike in the first steps.
        """
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("attn.wo.weight", "mlp.w_down.weight")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    # -- helpers -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    def pack_for_inference(self) -> Llama:
        """Lay out every projection for fast small-batch CPU decoding (see :class:`Linear`).

        A no-op on GPU and for non-fp32 weights. Costs one extra copy of the projection
        weights; undone by ``train()``. The :class:`~datadiet.pipeline.stages.inference.Generator`
        calls it; the maths is unchanged (only the summation order of the GEMMs differs).
        """
        for m in self.modules():
            if isinstance(m, Linear):
                m.pack_for_inference()
        return self

    def train(self, mode: bool = True) -> Llama:
        if mode:
            for m in self.modules():
                if isinstance(m, Linear):
                    m.unpack()
        return super().train(mode)

    def reset_rope_tables(self) -> None:
        """Forget the cached RoPE tables (after loading weights onto a new device)."""
        self._rope_len = 0

    def _rope(self, positions: Tensor | None, start: int, length: int) -> tuple[Tensor, Tensor]:
        """cos/sin for ``positions`` ([B, T]) or the shared range ``start .. start+length``.

        The table is computed in float32 exactly as transformers does (position · inv_freq,
        then cos/sin), so loaded checkpoints see the same rotations, and is extended on demand.
        """
        needed = int(positions.max()) + 1 if positions is not None else start + length
        device = self.embed.weight.device
        if needed > self._rope_len or self.rope_cos.device != device:
            n = max(needed, self.config.max_seq_len, self._rope_len)
            d = self.config.d_head
            inv_freq = 1.0 / (
                self.config.rope_theta
                ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
            )
            pos = torch.arange(n, device=device, dtype=torch.float32)
            freqs = pos[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self.rope_cos, self.rope_sin = emb.cos(), emb.sin()
            self._rope_len = n
        if positions is None:
            return self.rope_cos[start : start + length], self.rope_sin[start : start + length]
        return self.rope_cos[positions], self.rope_sin[positions]

    @staticmethod
    def _attention_mask(
        key_mask: Tensor | None, past: int, t: int, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """Boolean ``[B, 1, T, past+T]`` mask (True = attend), or ``None`` + ``is_causal``.

        The fast paths — no padding and no cached prefix (training), or one new token over a
        padding-free cache (decoding) — need no mask at all. Otherwise the mask is causal over
        the offset plus the key-padding mask; each query may always see itself, so the rows of
        padding queries are never fully masked (a fully masked row makes SDPA return NaN, and
        ``0 · NaN`` would then leak into real rows through the values).
        """
        if key_mask is None:
            if past == 0:
                return None, t > 1
            if t == 1:
                return None, False
        total = past + t
        q_pos = torch.arange(past, total, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        allowed = k_pos <= q_pos  # [T, total]
        if key_mask is None:
            return allowed[None, None], False
        mask = allowed[None] & key_mask[:, None, :total]
        mask = mask | (k_pos == q_pos)[None]
        return mask[:, None], False

    def _key_mask(
        self, attention_mask: Tensor | None, kv_cache: KVCache | None, t: int
    ) -> Tensor | None:
        """Which key positions hold real tokens (``None``: all of them), recorded in the cache.

        Runs before the blocks, so the cache has room for this step's keys and values.
        """
        if kv_cache is not None:
            kv_cache.reserve(t, attention_mask)
            return kv_cache.key_mask
        if attention_mask is None or bool(attention_mask.all()):
            return None
        if attention_mask.shape[1] != t:
            raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns for {t} tokens")
        return attention_mask.bool()

    def _positions(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        kv_cache: KVCache | None,
        key_mask: Tensor | None,
    ) -> Tensor | None:
        """Per-row RoPE positions, or ``None`` when every row sits at the same positions.

        With padding anywhere, each row continues its own count of real tokens, so a
        left-padded row starts at position 0 (and a cache remembers where each row stands).
        """
        if key_mask is None:
            return None
        t = input_ids.shape[1]
        base = kv_cache.next_pos[:, None] if kv_cache is not None else 0
        if attention_mask is not None:
            offsets = (attention_mask[:, -t:].long().cumsum(-1) - 1).clamp_min(0)
        else:
            offsets = torch.arange(t, device=input_ids.device)[None]
        return base + offsets

    def _rope_for(self, position_ids: Tensor | None, past: int, b: int, t: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """cos/sin tables and the ``[B, T]`` positions they stand for.

        Shared positions use one ``[T, D]`` table that broadcasts over the batch.
        """
        if position_ids is None:
            cos, sin = self._rope(None, past, t)
            positions = torch.arange(past, past + t, device=self.device).expand(b, t)
            return cos, sin, positions
        cos, sin = self._rope(position_ids, 0, 0)
        return cos, sin, position_ids

    def _loss(self, h: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
        """Mean next-token loss from the fused linear cross-entropy (no ``[N, V]`` logits)."""
        chunk = self.ce_chunk_size
        if chunk is None and h.device.type == "cpu":
            chunk = CPU_CE_CHUNK
        return ops.fused_linear_cross_entropy(
            h.reshape(-1, h.shape[-1]), self.lm_head.weight, targets.reshape(-1),
            ignore_index=ignore_index, chunk_size=chunk,
        )

    @staticmethod
    def _keep_positions(h: Tensor, logits_to_keep: int | Tensor) -> Tensor:
        """The hidden states whose logits were asked for: the last ``k`` positions for an int
        (``0`` = all), or the sequence positions listed in a 1-D index tensor."""
        if isinstance(logits_to_keep, Tensor):
            return h.index_select(1, logits_to_keep.to(h.device))
        if logits_to_keep:
            return h[:, -logits_to_keep:]
        return h

    # -- forward -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_to_keep: int | Tensor = 0,
        ignore_index: int = -100,
        return_hidden: bool = False,
    ) -> LlamaOutput:
        """Run the decoder.

        Args:
            input_ids: ``[B, T]`` token ids.
            targets: ``[B, T]`` next-token ids (``ignore_index`` to skip); when given, the loss
                comes from the fused linear cross-entropy and ``logits`` is ``None``.
            kv_cache: cache to read the prefix from and append this step's keys/values to.
            attention_mask: 1 for real tokens, 0 for padding: ``[B, T]`` over *these* input
                tokens (the cache remembers earlier ones), or ``[B, past + T]`` over every cached
                and new position, which also rewrites the cache's record of the cached ones.
            position_ids: ``[B, T]`` RoPE positions; by default they continue each row's
                count of real tokens, so left-padded rows start at position 0.
            logits_to_keep: the positions whose logits (or hidden states) are returned: the
                last ``k`` for an int (``0`` = all), or a 1-D tensor of sequence positions.
                Generation needs one and scoring the positions it scores; with a 49k vocabulary
                the output projection of the rest is most of the cost.
            return_hidden: return the final normed hidden states instead of logits, so a caller
                can apply the output projection in chunks.
        """
        b, t = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        key_mask = self._key_mask(attention_mask, kv_cache, t)
        if position_ids is None:
            position_ids = self._positions(input_ids, attention_mask, kv_cache, key_mask)
        cos, sin, positions = self._rope_for(position_ids, past, b, t)
        mask, is_causal = self._attention_mask(key_mask, past, t, input_ids.device)

        x = self.embed(input_ids)
        residual: Tensor | None = None
        for block in self.layers:
            x, residual = block(x, residual, cos, sin, mask, is_causal, kv_cache)
        h, _ = ops.add_rms_norm(x, residual, self.norm.weight, self.norm.eps)
        if kv_cache is not None:
            kv_cache.advance(t, positions)

        if targets is not None:
            loss = self._loss(h, targets, ignore_index)
            return LlamaOutput(None, loss, h if return_hidden else None)
        h = self._keep_positions(h, logits_to_keep)
        if return_hidden:
            return LlamaOutput(None, None, h)
        return LlamaOutput(self.lm_head(h).float(), None, None)

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """A KV cache matching this model's dtype and device (``capacity=None``: growing)."""
        return KVCache(
            self.config, batch_size, capacity, dtype=self.embed.weight.dtype, device=self.device
        )
