"""Hugging Face Llama checkpoints in and out of :class:`~datadiet.kernels.model.Llama`.

Why a module of its own: the model file stays "the model in one sitting", and loading needs only
a local folder — resolving names (hub ids, the offline SmolLM2 package) is the pipeline's job
(:func:`datadiet.pipeline.models.loading.load_llama`), so ``kernels/`` imports nothing from the
rest of datadiet and runs on a machine that has only torch and safetensors.

Our module fuses q/k/v into one matrix and gate/up into another; these functions split and join
transformers' names so that a saved folder loads in ``LlamaForCausalLM`` too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from datadiet.kernels.model import Llama, LlamaConfig

__all__ = ["hf_state_dict", "load_hf_state_dict", "load_llama", "write_llama_files"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def load_llama(
    folder: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Llama:
    """Build a :class:`Llama` from a local folder holding ``config.json`` and ``*.safetensors``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such model folder: {folder}")
    config = LlamaConfig.from_hf_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    with torch.device("meta"):
        model = Llama(config)
    load_hf_state_dict(model, state, dtype=dtype)
    return model.to(device or "cpu")


def load_hf_state_dict(
    model: Llama, state: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> None:
    """Map transformers' names onto ``model`` (fusing q/k/v and gate/up) and load them."""
    cfg = model.config
    state = {k.removeprefix("model."): v for k, v in state.items()}
    mapped: dict[str, Tensor] = {"embed.weight": state.pop("embed_tokens.weight")}
    mapped["norm.weight"] = state.pop("norm.weight")
    if "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if not cfg.tie_embeddings:
            mapped["lm_head.weight"] = head
    elif not cfg.tie_embeddings:
        raise KeyError("checkpoint has untied embeddings but no lm_head.weight")
    for i in range(cfg.n_layers):
        mapped.update(_layer_from_hf(state, i))
    leftover = [k for k in state if "rotary_emb" not in k]
    if leftover:
        raise KeyError(f"unexpected weights in checkpoint: {leftover[:8]}")
    mapped = {k: v.to(dtype) for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise KeyError(f"weights missing from checkpoint: {missing[:8]}")
    model.reset_rope_tables()  # the tables were built on the meta device


def _layer_from_hf(state: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    p = f"layers.{i}."
    return {
        p + "attn.wqkv.weight": torch.cat(
            [state.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"], dim=0
        ),
        p + "attn.wo.weight": state.pop(p + "self_attn.o_proj.weight"),
        p + "mlp.w_gate_up.weight": torch.cat(
            [state.pop(p + "mlp.gate_proj.weight"), state.pop(p + "mlp.up_proj.weight")], dim=0
        ),
        p + "mlp.w_down.weight": state.pop(p + "mlp.down_proj.weight"),
        p + "attn_norm.weight": state.pop(p + "input_layernorm.weight"),
        p + "mlp_norm.weight": state.pop(p + "post_attention_layernorm.weight"),
    }


def hf_state_dict(model: Llama) -> dict[str, Tensor]:
    """``model``'s weights under transformers' names (q/k/v and gate/up split again)."""
    cfg = model.config
    out = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, blk in enumerate(model.layers):
        p = f"model.layers.{i}."
        q, k, v = blk.attn.wqkv.weight.split((blk.attn.q_dim, blk.attn.kv_dim, blk.attn.kv_dim))
        gate, up = blk.mlp.w_gate_up.weight.split(cfg.d_ff)
        out.update({
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": blk.attn.wo.weight,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": blk.mlp.w_down.weight,
            p + "input_layernorm.weight": blk.attn_norm.weight,
            p + "post_attention_layernorm.weight": blk.mlp_norm.weight,
        })
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def write_llama_files(model: Llama, folder: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in transformers' layout into ``folder``.

    Not atomic by itself: callers write into a temporary folder from the pipeline's one atomic
    writer (:func:`datadiet.pipeline.io.atomic_dir`) so a crash never leaves half a model.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_hf_config(), indent=2))
    return folder
