"""The one LM scorer: per-token log-probabilities from a causal LM, on one of two backends.

Perplexity filtering, IFD, prompt compression, generation-time scoring and ICL all reduce to
"log p(token | prefix)" for many texts. Doing that in one place means one batching strategy
(length-bucketed, by a token budget rather than a row count, so a batch of long documents does not
blow memory while short ones still fill the batch), one truncation rule, one FLOP count in the
ledger, and one log-softmax over the vocabulary (:func:`_log_softmax_rows`).

Two backends run the forward pass:

* ``"llama"`` — datadiet's own :class:`~datadiet.kernels.model.Llama` on the fused kernels, the
  default for every Llama-layout checkpoint (SmolLM2 loads into it exactly), so curation,
  compression and ICL run on the same code as training and generation;
* ``"transformers"`` — ``AutoModelForCausalLM`` for every other architecture.

``backend="auto"`` picks from the checkpoint's ``config.json`` (``model_type`` and the features
datadiet's Llama supports). Either way only the positions that are scored get logits, and the
log-softmax runs a bounded number of positions at a time: a batch never holds two ``[B, T, V]``
float32 tensors (the Llama backend not even one: its output projection runs chunk by chunk).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from datadiet.pipeline.ledger import MODEL_LOADING, Ledger, ModelShape
from datadiet.pipeline.models.loading import (
    DEFAULT_CAUSAL_LM,
    causal_lm_config,
    load_causal_lm,
    load_llama,
    resolve_causal_lm,
)
from datadiet.pipeline.models.tokenizer import load_tokenizer

__all__ = ["BACKENDS", "LMScorer", "TokenScores"]

Backend = Literal["auto", "llama", "transformers"]
BACKENDS: tuple[str, ...] = ("auto", "llama", "transformers")

#: Float32 logits held at once by the log-softmax (64 MB): 341 positions of a 49k vocabulary,
#: enough rows for the output projection's GEMM to run at full speed on a CPU.
LOGIT_CHUNK_ELEMENTS = 1 << 24


@dataclass
class TokenScores:
    """Scores of one text: its token ids and ``log p(token_i | tokens_<i)`` for i >= 1.

    ``logprobs[j]`` scores ``ids[j + 1]``; the first token has no prediction. ``offsets`` are the
    character spans of each id in the text (when the tokenizer can give them), which is what lets
    compression drop tokens without splitting a multi-byte character.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    offsets: np.ndarray | None = None

    @property
    def n_scored(self) -> int:
        return len(self.logprobs)

    @property
    def mean_nll(self) -> float:
        return float(-self.logprobs.mean()) if len(self.logprobs) else math.nan


def _log_softmax_rows(
    source: Any,
    head: Callable[[Any], Any],
    rows: Any,
    targets: Any,
    *,
    chunk_rows: int,
    full_rows: Any = None,
) -> tuple[Any, Any]:
    """THE log-softmax over the vocabulary: ``log p(targets[i])`` at ``source[rows[i]]``.

    Args:
        source: ``[N, F]`` flattened positions: hidden states (``head`` is the output
            projection) or logits (``head`` passes them through).
        rows: indices into ``source`` of the positions to score; ``targets`` their token ids.
        chunk_rows: positions per chunk, so the float32 logits and their log-softmax exist
            for one chunk at a time.
        full_rows: indices into ``rows`` whose whole distribution is also returned.

    Returns ``(picked [len(rows)], full [len(full_rows), V] or None)``.
    """
    import torch

    picked = torch.empty(rows.shape[0], dtype=torch.float32, device=source.device)
    full = None
    for start in range(0, rows.shape[0], chunk_rows):
        stop = min(rows.shape[0], start + chunk_rows)
        logits = head(source.index_select(0, rows[start:stop])).float()
        logp = torch.log_softmax(logits, dim=-1)
        picked[start:stop] = logp.gather(1, targets[start:stop, None]).squeeze(1)
        if full_rows is not None:
            if full is None:
                full = logp.new_empty((full_rows.shape[0], logp.shape[1]))
            inside = (full_rows >= start) & (full_rows < stop)
            full[inside] = logp[full_rows[inside] - start]
    return picked, full


def _is_loaded_model(model: Any) -> bool:
    return hasattr(model, "forward") and hasattr(model, "parameters")


class _LlamaRunner:
    """Forward passes on datadiet's Llama; hidden states out, output projection by chunk."""

    name = "llama"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.shape = model.config.shape()
        self.max_context: int | None = model.config.max_seq_len
        self.vocab_size: int = model.config.vocab_size
        self.head = model.lm_head

    @property
    def device(self) -> Any:
        return self.model.device

    def new_cache(self, batch_size: int) -> Any:
        return self.model.new_cache(batch_size)  # growing: scoring does not know the length

    @staticmethod
    def repeat_cache(cache: Any, n: int) -> Any:
        import torch

        cache.reorder(torch.zeros(n, dtype=torch.long, device=cache.next_pos.device))
        return cache

    def forward(self, ids: Any, *, attention_mask: Any, position_ids: Any, cache: Any,
                keep_from: int) -> tuple[Any, Callable[[Any], Any], Any]:
        """Hidden states of columns ``keep_from..`` and the head that turns them into logits."""
        out = self.model(ids, kv_cache=cache, attention_mask=attention_mask,
                         position_ids=position_ids, logits_to_keep=ids.shape[1] - keep_from,
                         return_hidden=True)
        return out.hidden, self.head, cache


class _TransformersRunner:
    """Forward passes on a transformers causal LM; logits of the kept columns out."""

    name = "transformers"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.shape = ModelShape.from_hf_config(model.config)
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        output = model.get_output_embeddings()
        self.vocab_size = int(output.weight.shape[0]) if output is not None else model.config.vocab_size

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @staticmethod
    def head(logits: Any) -> Any:
        return logits

    def new_cache(self, batch_size: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    @staticmethod
    def repeat_cache(cache: Any, n: int) -> Any:
        cache.batch_repeat_interleave(n)
        return cache

    def forward(self, ids: Any, *, attention_mask: Any, position_ids: Any, cache: Any,
                keep_from: int) -> tuple[Any, Callable[[Any], Any], Any]:
        keep = ids.shape[1] - keep_from
        kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=attention_mask,
                                      position_ids=position_ids, use_cache=cache is not None)
        if cache is not None:
            kwargs["past_key_values"] = cache
        try:
            out = self.model(**kwargs, logits_to_keep=keep)
        except TypeError:  # an architecture without logits_to_keep: all logits, then slice
            out = self.model(**kwargs)
        return out.logits[:, -keep:], self.head, out.past_key_values if cache is not None else None


def choose_backend(config: dict[str, Any]) -> str:
    """``"llama"`` when datadiet's Llama loads this checkpoint exactly, else ``"transformers"``."""
    from datadiet.kernels.model import LlamaConfig  # torch: only once a model is being built

    try:
        LlamaConfig.from_hf_config(config)
    except (ValueError, TypeError):
        return "transformers"
    return "llama"


@lru_cache(maxsize=4)
def _load_llama_and_tokenizer(path: str, device: str) -> tuple[Any, Any]:
    """datadiet's Llama and the tokenizer beside it, once per process (like ``load_causal_lm``)."""
    model = load_llama(path, device=device).eval()
    return model, load_tokenizer(path)


def _runner_for(model: Any, tokenizer: Any, backend: str, device: str | None
                ) -> tuple[Any, Any]:
    """Build the runner and tokenizer for a name, a folder, or an already loaded model."""
    import torch

    from datadiet.kernels.model import Llama  # torch: only once a model is being built

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if _is_loaded_model(model):
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a loaded model")
        if isinstance(model, Llama):
            if backend == "transformers":
                raise ValueError("a datadiet Llama runs on the 'llama' backend only")
            return _LlamaRunner(model.eval()), tokenizer
        if backend == "llama":
            raise ValueError("a transformers model runs on the 'transformers' backend only")
        return _TransformersRunner(model.eval()), tokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        backend = choose_backend(causal_lm_config(model))
    if backend == "llama":
        llama, loaded_tokenizer = _load_llama_and_tokenizer(resolve_causal_lm(model), device)
        return _LlamaRunner(llama), tokenizer or loaded_tokenizer
    hf, loaded_tokenizer = load_causal_lm(model, device)
    return _TransformersRunner(hf), tokenizer or loaded_tokenizer


class LMScorer:
    """Batched token log-probs from a causal LM (default: SmolLM2-135M-Instruct, offline).

    Args:
        model: a Hugging Face id, a local folder, ``None`` for the default, or a loaded model
            (datadiet ``Llama`` or transformers) together with its ``tokenizer``.
        backend: ``"auto"`` (datadiet's Llama for Llama-layout checkpoints, transformers
            otherwise), ``"llama"`` or ``"transformers"``.
        max_length: sequences are truncated to this many tokens (documents longer than the
            model's context are scored on their head; say so in reports).
        tokens_per_batch: padded-token budget of one forward pass; batches are formed from
            length-sorted sequences so padding stays small.
        ledger / stage: where the spent tokens and FLOPs are recorded; loading the model is
            recorded under its own stage, ``"model-loading"``.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        tokenizer: Any = None,
        backend: Backend = "auto",
        max_length: int = 512,
        tokens_per_batch: int = 4096,
        device: str | None = None,
        ledger: Ledger | None = None,
        stage: str = "lm-scoring",
    ) -> None:
        if _is_loaded_model(model):
            self.model_name: str | None = getattr(model, "datadiet_name", type(model).__name__)
        else:
            self.model_name = None if model is None else str(model)
        self.ledger = ledger
        self.stage = stage
        loads = ledger is not None and not _is_loaded_model(model)
        loading = ledger.stage(MODEL_LOADING, at_root=True) if loads else None  # type: ignore[union-attr]
        with loading or contextlib.nullcontext():
            self._runner, self.tokenizer = _runner_for(model, tokenizer, backend, device)
        self.backend: str = self._runner.name
        self.model = self._runner.model
        self.device = self._runner.device
        self.shape: ModelShape = self._runner.shape
        self.max_length = max_length
        self.tokens_per_batch = tokens_per_batch
        # A document boundary token in front, so the first real token is scored too.
        tok = self.tokenizer
        eos, bos = getattr(tok, "eos_token_id", None), getattr(tok, "bos_token_id", None)
        self.prefix_id = eos if eos is not None else bos
        if getattr(tok, "pad_token_id", None) is None and hasattr(tok, "pad_token"):
            tok.pad_token = tok.eos_token

    @property
    def _chunk_rows(self) -> int:
        return max(1, LOGIT_CHUNK_ELEMENTS // self._runner.vocab_size)

    @property
    def max_context(self) -> int | None:
        """The model's context length (``None`` if its config does not say)."""
        return self._runner.max_context

    def __repr__(self) -> str:
        name = self.model_name or DEFAULT_CAUSAL_LM
        return f"LMScorer({name!r}, backend={self.backend!r})"

    # -- tokenisation ----------------------------------------------------------------------

    def encode(self, texts: Sequence[str], with_offsets: bool = False) -> list[dict]:
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_length - 1,
            return_offsets_mapping=with_offsets,
        )
        out = []
        for i in range(len(texts)):
            item = {"ids": [self.prefix_id, *enc["input_ids"][i][: self.max_length - 1]]}
            if with_offsets:
                item["offsets"] = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            out.append(item)
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- scoring ---------------------------------------------------------------------------

    def _batches(self, lengths: np.ndarray, tokens_per_batch: int) -> list[np.ndarray]:
        order = np.argsort(-lengths, kind="stable")
        batches, current, longest = [], [], 0
        for idx in order:
            longest_if_added = max(longest, int(lengths[idx]))
            if current and longest_if_added * (len(current) + 1) > tokens_per_batch:
                batches.append(np.asarray(current))
                current, longest_if_added = [], int(lengths[idx])
            current.append(idx)
            longest = longest_if_added
        if current:
            batches.append(np.asarray(current))
        return batches

    def _timed(self) -> contextlib.AbstractContextManager:
        """This scorer's ledger stage (a no-op when a caller already opened it)."""
        if self.ledger is None:
            return contextlib.nullcontext()
        return self.ledger.stage(self.stage)

    def _record(self, tokens: int, flops: float) -> None:
        if self.ledger is not None:
            self.ledger.add(self.stage, tokens=tokens, flops=flops)

    def score_ids(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        starts: Sequence[int] | None = None,
        tokens_per_batch: int | None = None,
    ) -> list[np.ndarray]:
        """Log-probs of each sequence's tokens 1..n given their prefixes (one array per sequence).

        ``starts[i]`` (default 0) skips the first log-probs of sequence ``i``: the array then
        scores tokens ``starts[i] + 1 .. n``, and no logits are formed for the positions before
        (a prompt in front of the continuation that is being scored needs none).
        """
        import torch

        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        first = np.zeros(len(sequences), dtype=np.int64) if starts is None else np.asarray(starts)
        results = [np.zeros(0, dtype=np.float32)] * len(sequences)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = int(pad if pad is not None else self.prefix_id or 0)
        with self._timed():
            for batch in self._batches(lengths, tokens_per_batch or self.tokens_per_batch):
                n_scored = lengths[batch] - 1 - first[batch]
                if n_scored.max() <= 0:
                    continue  # nothing to predict in this batch (empty texts)
                width = int(lengths[batch].max())
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                for row, idx in enumerate(batch):
                    ids[row, : lengths[idx]] = torch.as_tensor(sequences[idx], dtype=torch.long)
                with torch.inference_mode():
                    picked = self._score_right_padded(ids, lengths[batch], first[batch])
                for row, idx in enumerate(batch):
                    results[idx] = picked[row]
                n = lengths[batch]
                self._record(int(n.sum()), sum(self.shape.flops(int(k), int(k), training=False) for k in n))
        return results

    def _score_right_padded(self, ids: Any, lengths: np.ndarray, first: np.ndarray) -> list[np.ndarray]:
        """Log-probs of one right-padded batch, from column ``first[row]`` of each row on.

        No attention mask is needed: with the padding on the right, every real token attends
        only to real tokens under the causal mask alone, and the padding columns' outputs are
        never read. That keeps the attention on its fast, mask-free path.
        """
        import torch

        keep_from = int(first.min())
        width = ids.shape[1]
        ids = ids.to(self.device)
        source, head, _ = self._runner.forward(
            ids[:, :-1], attention_mask=None, position_ids=None, cache=None, keep_from=keep_from
        )
        kept = width - 1 - keep_from
        cols = torch.arange(keep_from, width - 1)[None, :]
        wanted = (cols >= torch.as_tensor(first)[:, None]) & (
            cols < torch.as_tensor(lengths)[:, None] - 1)
        rows = wanted.reshape(-1).nonzero().squeeze(1).to(self.device)
        targets = ids[:, keep_from + 1 :].reshape(-1).index_select(0, rows)
        picked, _ = _log_softmax_rows(source.reshape(len(ids) * kept, -1), head, rows, targets,
                                      chunk_rows=self._chunk_rows)
        counts = wanted.sum(1).tolist()
        return [p.numpy() for p in picked.cpu().split(counts)]

    def token_logprobs(self, texts: Sequence[str], with_offsets: bool = False) -> list[TokenScores]:
        """Per-token scores of each text (the boundary token in front is not returned)."""
        encoded = self.encode(texts, with_offsets=with_offsets)
        scores = self.score_ids([e["ids"] for e in encoded])
        return [
            TokenScores(np.asarray(e["ids"][1:]), s, e.get("offsets"))
            for e, s in zip(encoded, scores, strict=True)
        ]

    def nll(self, texts: Sequence[str]) -> np.ndarray:
        """Mean negative log-likelihood per text (nats/token); NaN for an empty text."""
        return np.asarray([s.mean_nll for s in self.token_logprobs(texts)])

    def perplexity(self, texts: Sequence[str]) -> np.ndarray:
        return np.exp(self.nll(texts))

    def conditional_nll(
        self, prompts: Sequence[str], continuations: Sequence[str]
    ) -> np.ndarray:
        """Mean NLL of each continuation given its prompt (IFD's conditioned loss).

        The prompt is kept whole where possible: if prompt + continuation exceeds
        ``max_length``, the prompt is cut from the left so the continuation is still scored.
        """
        enc_p = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        enc_c = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
        seqs, starts = [], []
        for p, c in zip(enc_p, enc_c, strict=True):
            c = c[: self.max_length - 2]
            room = self.max_length - 1 - len(c)
            p = p[-room:] if room > 0 else []
            seqs.append([self.prefix_id, *p, *c])
            starts.append(len(p))  # logprobs index where the continuation starts
        scores = self.score_ids(seqs, starts=starts)
        return np.asarray([float(-s.mean()) if len(s) else math.nan for s in scores])

    def continuation_logprobs(
        self, prompt: str | Sequence[int], continuations: Sequence[str | Sequence[int]]
    ) -> list[np.ndarray]:
        """Per-token log-probs of each continuation after one shared prompt (label words, answer
        options, candidate demonstrations): the prompt runs once, its cache serves them all.

        ``prompt`` and ``continuations`` are texts or token ids; a text prompt gets the
        document-boundary token in front. Returns one array per continuation, one log-prob per
        continuation token (a continuation with no tokens gets an empty array).
        """
        import torch

        def ids_of(x: str | Sequence[int]) -> list[int]:
            return list(self.tokenizer(x, add_special_tokens=False)["input_ids"]) if isinstance(
                x, str) else [int(i) for i in x]

        prompt_ids = [self.prefix_id, *ids_of(prompt)] if isinstance(prompt, str) else ids_of(prompt)
        conts = [ids_of(c) for c in continuations]
        if not prompt_ids:
            raise ValueError("the prompt needs at least one token")
        if not conts:
            return []
        p = len(prompt_ids)
        _, last, cache = self.logprobs_with_cache(
            torch.as_tensor([prompt_ids]), attention_mask=torch.ones((1, p), dtype=torch.long),
            position_ids=torch.arange(p)[None], score_from=p - 1,
        )
        width = max(1, max(len(c) for c in conts))
        n = len(conts)
        cache = self._runner.repeat_cache(cache, n)
        pad = int(getattr(self.tokenizer, "pad_token_id", None) or 0)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for row, c in enumerate(conts):
            ids[row, : len(c)] = torch.as_tensor(c, dtype=torch.long)
            mask[row, p : p + len(c)] = 1
        logprobs, _, _ = self.logprobs_with_cache(
            ids, attention_mask=mask, position_ids=torch.arange(p, p + width).expand(n, width),
            past_key_values=cache, score_from=0,
        )
        out = []
        for row, c in enumerate(conts):
            if not c:
                out.append(np.zeros(0, dtype=np.float32))
                continue
            first = last[0, c[0]].reshape(1)
            out.append(torch.cat([first, logprobs[row, : len(c) - 1]]).numpy())
        return out

    def logprobs_with_cache(
        self,
        input_ids: Any,
        *,
        attention_mask: Any,
        position_ids: Any,
        past_key_values: Any = None,
        score_from: int = 0,
        last_cols: Any = None,
    ) -> tuple[Any, Any, Any]:
        """One forward pass that extends a KV cache (iterative compression, incremental scoring).

        Args:
            input_ids: ``(B, M)`` new tokens; rows may be padded anywhere (mask them out).
            attention_mask: ``(B, past + M)`` over cached and new positions; cached padding
                stays masked, so rows of different lengths share one cache (and a cached token
                masked now is ignored from now on).
            position_ids: ``(B, M)`` explicit positions (padding-independent RoPE).
            past_key_values: the cache to extend (as returned by an earlier call), or ``None``
                to start one. Its ``batch_select_indices(index)`` keeps only some rows.
            score_from: first column whose next-token prediction is needed.
            last_cols: per row, a column (>= ``score_from``) whose full next-token distribution
                is returned; default ``score_from``.

        Returns:
            ``(logprobs, last, cache)``: ``logprobs[b, j]`` = log p(input[b, score_from+j+1]) for
            ``j < M - score_from - 1``; ``last[b]`` the full log-softmax ``(V,)`` at column
            ``last_cols[b]`` (the prediction for whatever text comes next); and the grown
            cache. Only the outputs from ``score_from`` on are materialised.
        """
        import torch

        b, m = int(input_ids.shape[0]), int(input_ids.shape[1])
        past = int(attention_mask.shape[1]) - m
        if not 0 <= score_from < m:
            raise ValueError(f"score_from={score_from} must be a column of the {m} new tokens")
        cache = past_key_values if past_key_values is not None else self._runner.new_cache(b)
        ids = input_ids.to(self.device)
        keep = m - score_from
        with self._timed(), torch.inference_mode():
            source, head, cache = self._runner.forward(
                ids, attention_mask=attention_mask.to(self.device),
                position_ids=position_ids.to(self.device), cache=cache, keep_from=score_from,
            )
            # every kept column is scored; the last one's target is a placeholder, dropped below
            targets = torch.cat([ids[:, score_from + 1 :], ids.new_zeros((b, 1))], dim=1)
            cols = (torch.full((b,), score_from) if last_cols is None
                    else torch.as_tensor(last_cols, dtype=torch.long))
            full_rows = (torch.arange(b) * keep + cols - score_from).to(self.device)
            picked, last = _log_softmax_rows(
                source.reshape(b * keep, -1), head, torch.arange(b * keep, device=self.device),
                targets.reshape(-1), chunk_rows=self._chunk_rows, full_rows=full_rows,
            )
            n_new = int(attention_mask[:, past:].sum())
            self._record(n_new, self.shape.flops(n_new, past + m, training=False))
        return picked.view(b, keep)[:, : keep - 1].cpu(), last.cpu(), cache
