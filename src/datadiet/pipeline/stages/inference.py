"""Inference on datadiet's Llama: batched prefill, greedy / top-p decoding with a KV cache, scoring.

Why not ``transformers.generate``: the point of the inference stage is to run on the fused
kernels and to account for every token in the ledger. The loop is small on purpose: one prefill
of the left-padded batch (so every row's last prompt token sits in the same column), then one
token per step through the KV cache, dropping rows from the batch as they hit a stop token.

Ledger convention (analytic, like every datadiet report): a prompt of ``P`` tokens costs
``P · flops_per_token(context=P)``; the ``i``-th generated token fed back costs
``flops_per_token(context=P+i)``. Padding is not counted: the ledger measures the work the
request needs, not how well a batch happened to be packed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datadiet.kernels.model import Llama
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.loading import load_llama, resolve_causal_lm
from datadiet.pipeline.models.scoring import LMScorer
from datadiet.pipeline.models.tokenizer import load_tokenizer

__all__ = ["Generation", "Generator", "load_generator", "sample_next"]


@dataclass
class Generation:
    """One completion: the new text, its token ids (stop token included) and why it ended."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens)


def sample_next(
    logits: Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token per row from ``[B, V]`` logits: argmax, or temperature/top-k/top-p.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (always at
    least one), so ``top_p=1`` is plain sampling and a tiny ``top_p`` is greedy.
    """
    if not do_sample or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Generator:
    """Generate from and score texts with a datadiet :class:`~datadiet.kernels.model.Llama`.

    Args:
        model: a loaded ``Llama``, a folder (a Hugging Face Llama checkpoint or a datadiet
            training run's ``model/`` folder), a hub id, or ``None`` for SmolLM2-135M-Instruct.
        tokenizer: defaults to the one saved beside the model.
        cache: ``"static"`` (preallocate prompt + new tokens) or ``"growing"`` (double on demand).
        batch_size: prompts per prefill; prompts are length-sorted first so padding stays small.
        ledger / stage: where tokens, FLOPs, seconds and peak memory are recorded.
        pack: lay the weights out for fast small-batch CPU decoding
            (:meth:`~datadiet.kernels.model.Llama.pack_for_inference`; one extra weight copy).
    """

    def __init__(
        self,
        model: Llama | str | os.PathLike | None = None,
        tokenizer: Any = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        cache: str = "static",
        batch_size: int = 16,
        ledger: Ledger | None = None,
        stage: str = "generate",
        pack: bool = True,
    ) -> None:
        if cache not in ("static", "growing"):
            raise ValueError(f"cache must be 'static' or 'growing', got {cache!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, Llama):
            self.model = model.to(device)
            if tokenizer is None:
                raise ValueError("pass the tokenizer together with a loaded model")
        else:
            folder = resolve_causal_lm(None if model is None else str(model))
            self.model = load_llama(folder, dtype=dtype, device=device)
            if tokenizer is None:
                tokenizer = load_tokenizer(str(folder))
        self.model.eval()
        if pack:
            self.model.pack_for_inference()
        self.tokenizer = tokenizer
        self.cache = cache
        self.batch_size = batch_size
        self.ledger = ledger
        self.stage = stage
        self.shape = self.model.config.shape()
        self.pad_id = _first_not_none(
            getattr(tokenizer, "pad_token_id", None),
            getattr(tokenizer, "eos_token_id", None),
            self.model.config.pad_token_id,
            0,
        )
        # Scoring goes through the project's one scorer, on this very model (no second copy).
        self.scorer = LMScorer(self.model, tokenizer=tokenizer, max_length=self.model.config.max_seq_len,
                               ledger=ledger, stage=stage)
        self.default_stop = {
            i
            for i in (getattr(tokenizer, "eos_token_id", None), self.model.config.eos_token_id)
            if i is not None
        }

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- prompts ----------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], chat: bool = False) -> list[list[int]]:
        """Token ids of each prompt; ``chat=True`` wraps it as a user turn (chat template)."""
        out = []
        for p in prompts:
            if chat:
                ids = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True
                )
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                out.append(list(ids))
            else:
                out.append(list(self.tokenizer.encode(p)))
        return out

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        max_new_tokens: int = 64,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        chat: bool = False,
    ) -> list[Generation]:
        """Complete each prompt (strings, or lists of token ids); results keep the input order.

        Greedy (``do_sample=False``) gives the same tokens as ``transformers.generate``'s greedy
        search up to float rounding; with ``seed`` set, sampling is reproducible.
        """
        if len(prompts) == 0:
            return []
        if isinstance(prompts[0], str):
            ids = self.encode(prompts, chat=chat)  # type: ignore[arg-type]
        else:
            ids = [list(p) for p in prompts]  # type: ignore[arg-type]
        if any(len(p) == 0 for p in ids):
            raise ValueError("empty prompt: give at least one token")
        stops = set(stop_token_ids) if stop_token_ids is not None else self.default_stop
        gen = None
        if do_sample:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed if seed is not None else int(torch.randint(2**31, (1,)).item()))
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        results: list[Generation | None] = [None] * len(ids)
        ctx = self.ledger.stage(self.stage) if self.ledger is not None else _null_stage()
        with ctx as rec:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                outs = self._generate_batch(
                    [ids[i] for i in chunk], max_new_tokens, stops, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, top_k=top_k, generator=gen,
                )
                for i, (toks, reason) in zip(chunk, outs, strict=True):
                    text_ids = [t for t in toks if t not in stops]
                    results[i] = Generation(
                        text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                        token_ids=toks,
                        prompt_tokens=len(ids[i]),
                        finish_reason=reason,
                    )
                    if rec is not None:
                        self._account(rec, len(ids[i]), len(toks))
        return results  # type: ignore[return-value]

    def _account(self, rec: Any, prompt_len: int, new_tokens: int) -> None:
        fed_back = max(new_tokens - 1, 0)  # the last new token is never run through the model
        flops = self.shape.flops(prompt_len, prompt_len, training=False)
        if fed_back:
            mean_ctx = prompt_len + (fed_back + 1) / 2
            flops += self.shape.flops(fed_back, mean_ctx, training=False)  # linear in context
        rec.add(tokens=prompt_len + fed_back, flops=flops)
        rec.extra["prompt_tokens"] = rec.extra.get("prompt_tokens", 0) + prompt_len
        rec.extra["generated_tokens"] = rec.extra.get("generated_tokens", 0) + new_tokens

    @torch.inference_mode()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stops: set[int],
        *,
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        generator: torch.Generator | None,
    ) -> list[tuple[list[int], str]]:
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        capacity = width + max_new_tokens if self.cache == "static" else None
        cache = self.model.new_cache(b, capacity)
        logits = self.model(ids, kv_cache=cache, attention_mask=mask, logits_to_keep=1).logits[:, -1]

        out: list[list[int]] = [[] for _ in range(b)]
        reasons = ["length"] * b
        alive = list(range(b))  # batch row -> original index
        stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            nxt = sample_next(
                logits, do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
                generator=generator,
            )
            tokens = nxt.tolist()
            for row, orig in enumerate(alive):
                out[orig].append(tokens[row])
            if step == max_new_tokens - 1:
                break
            done = torch.isin(nxt, stop_t) if len(stops) else torch.zeros_like(nxt, dtype=torch.bool)
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                for row in done.nonzero().squeeze(-1).tolist():
                    reasons[alive[row]] = "stop"
                if keep.numel() == 0:
                    break
                alive = [alive[r] for r in keep.tolist()]
                cache.reorder(keep)
                nxt = nxt.index_select(0, keep)
            logits = self.model(nxt[:, None], kv_cache=cache).logits[:, -1]
        for orig in range(b):  # a stop token sampled on the very last step
            if out[orig] and out[orig][-1] in stops:
                reasons[orig] = "stop"
        return [(out[i], reasons[i]) for i in range(b)]

    # -- scoring ----------------------------------------------------------------------------

    def score_ids(self, sequences: Sequence[Sequence[int]], tokens_per_batch: int = 4096) -> list[np.ndarray]:
        """``log p(token_i | tokens_<i)`` for i >= 1 of each sequence (one array per sequence).

        The project's one scorer does the work (:class:`~datadiet.pipeline.models.scoring.
        LMScorer` on this model), timed under this generator's ledger stage.
        """
        ctx = self.ledger.stage(self.stage) if self.ledger is not None else _null_stage()
        with ctx:
            return self.scorer.score_ids(sequences, tokens_per_batch=tokens_per_batch)

    def score(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probs of each text; a boundary token in front lets the first be scored."""
        prefix = self.scorer.prefix_id
        seqs = [[prefix, *self.tokenizer.encode(t, add_special_tokens=False)] for t in texts]
        return self.score_ids(seqs)

    def score_completions(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Total log-prob of each completion given its prompt (e.g. ranking answer options)."""
        prefix = self.scorer.prefix_id
        seqs, starts = [], []
        for p, c in zip(prompts, completions, strict=True):
            pi = self.tokenizer.encode(p, add_special_tokens=False)
            ci = self.tokenizer.encode(c, add_special_tokens=False)
            seqs.append([prefix, *pi, *ci])
            starts.append(len(pi))
        ctx = self.ledger.stage(self.stage) if self.ledger is not None else _null_stage()
        with ctx:
            scores = self.scorer.score_ids(seqs, starts=starts)
        return np.asarray([float(s.sum()) for s in scores])


class _null_stage:  # noqa: N801 - a context manager standing in for Ledger.stage
    """``with`` target yielding ``None`` when no ledger was given."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _first_not_none(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def load_generator(model: str | os.PathLike | None = None, **kwargs: Any) -> Generator:
    """A :class:`Generator` for a folder (training run, its ``model/``, HF checkpoint) or id."""
    if model is not None and (Path(model) / "model" / "config.json").exists():
        model = Path(model) / "model"  # a training run's output folder
    return Generator(model, **kwargs)
