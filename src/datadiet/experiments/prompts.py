"""Prompting strategies side by side: what each costs in prompt tokens and what it buys.

The prompt half of the saved-compute report (``benchmarks/e2e.py``, ``datadiet demo``): on one
labelled task, zero-shot, random k-shot (one run per seed, for the spread), the best selection +
ordering, and that with its demonstrations compressed — accuracy and mean prompt tokens of each,
through the ICL evaluator (:class:`~datadiet.prompting.icl.ICLEvaluator`), on the same fixed test
rows. Only demonstrations are compressed (never the query), a demonstration is dropped whole
or keeps its answer verbatim, and the compression ratio that counts is best-uncompressed over best-compressed. A
rate too low for the protected text (short demonstrations: the answers are a large share) is
raised step by step, and the notes say where it ended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datadiet.experiments.report import PromptResults
from datadiet.pipeline.models.embedding import Embedder
from datadiet.prompting.compression import BudgetError
from datadiet.prompting.demos import DemoSelector, PromptTemplate, load_template
from datadiet.prompting.icl import ICLEvaluator, LabelledData, read_labelled

__all__ = ["BEST_ORDER", "BEST_STRATEGY", "compare_strategies", "compare_strategies_on_files"]

#: When the asked rate cannot hold the protected text (each demonstration's answer, the query),
#: the rate rises by this step, up to this cap, and the report says so.
RATE_STEP, MAX_RETRY_RATE = 0.05, 0.9

#: The selection and ordering called "best": kNN demonstrations (Liu et al. 2022) with the most
#: similar one last, next to the query (the order Liu et al. and Lu et al. 2022 favour).
BEST_STRATEGY, BEST_ORDER = "knn", "similar_last"


def compare_strategies(
    pool: LabelledData,
    test: LabelledData,
    template: PromptTemplate,
    *,
    task: str,
    k: int = 8,
    compress_rate: float = 0.25,
    seeds: Sequence[int] = (0,),
    model: str | None = None,
    embedder: Any = None,
    progress: Callable[[str], None] | None = None,
) -> PromptResults:
    """Zero-shot, random ``k``-shot, best ``k``-shot and best compressed, on ``test``."""
    say = progress or (lambda message: None)
    embedder = embedder or Embedder()
    evaluator = ICLEvaluator(template, model=model, embedder=embedder)

    def run(strategy: str, shots: int, order: str = "as_selected", seed: int = 0,
            rate: float | None = None) -> dict[str, float]:
        selector = DemoSelector(strategy, shots, template=template, embedder=embedder,
                                count_tokens=evaluator.scorer.count_tokens, seed=seed)
        selector.fit(pool.texts, pool.labels)
        result = evaluator.evaluate(selector, test.texts, test.labels, order=order, seed=seed,
                                    compress_rate=rate)
        say(f"prompts: {strategy} k={shots} {order} seed {seed}"
            + (f" compressed to {rate:g}" if rate else "")
            + f": accuracy {result.accuracy:.3f}, {result.mean_prompt_tokens:.0f} tokens")
        return {"accuracy": result.accuracy, "mean_prompt_tokens": result.mean_prompt_tokens,
                "seconds": result.seconds}

    best = f"{BEST_STRATEGY} {k}-shot, {BEST_ORDER}"
    rows = [{"strategy": "zero-shot", **run("random", 0), "seeds": 1}]
    randoms = [run("random", k, seed=seed) for seed in seeds]
    rows.append({
        "strategy": f"random {k}-shot",
        "accuracy": float(np.mean([r["accuracy"] for r in randoms])),
        "mean_prompt_tokens": float(np.mean([r["mean_prompt_tokens"] for r in randoms])),
        "seconds": float(np.mean([r["seconds"] for r in randoms])),
        "seeds": len(randoms),
        "accuracy spread (max - min)": float(np.ptp([r["accuracy"] for r in randoms])),
    })
    rows.append({"strategy": best, **run(BEST_STRATEGY, k, BEST_ORDER), "seeds": 1})
    notes: list[str] = []
    rate, measured = compress_rate, None
    while measured is None:
        try:
            measured = run(BEST_STRATEGY, k, BEST_ORDER, rate=rate)
        except BudgetError as exc:  # the protected answers alone need more than the budget
            if rate >= MAX_RETRY_RATE:
                raise
            notes.append(f"prompts: compressing to {rate:g} is infeasible ({exc}); "
                         f"retried at {min(rate + RATE_STEP, MAX_RETRY_RATE):g}.")
            rate = round(min(rate + RATE_STEP, MAX_RETRY_RATE), 4)
    compressed = f"{best}, compressed to {rate:g}"
    rows.append({"strategy": compressed, **measured, "seeds": 1})
    columns = ("strategy", "accuracy", "mean_prompt_tokens", "seconds", "seeds",
               "accuracy spread (max - min)")
    rows = [{c: row.get(c) for c in columns} | {"n": len(test)} for row in rows]
    zero_acc, best_acc = rows[0]["accuracy"], rows[2]["accuracy"]
    if best_acc <= zero_acc:
        notes.append(f"prompts: the best {k}-shot prompts ({100 * best_acc:.1f}%) did not beat "
                     f"zero-shot ({100 * zero_acc:.1f}%) — here demonstrations cost tokens "
                     "without buying accuracy.")
    if rows[2]["accuracy"] <= rows[1]["accuracy"]:
        notes.append(f"prompts: {best} did not beat random demonstrations "
                     f"({100 * rows[2]['accuracy']:.1f}% vs {100 * rows[1]['accuracy']:.1f}%).")
    notes.append(f"prompts: {len(test)} test rows, so one row is {100 / max(len(test), 1):.1f} "
                 "accuracy points; a drop smaller than that cannot be seen.")
    return PromptResults(task=task, model=model or "SmolLM2-135M-Instruct", rows=rows, best=best,
                         compressed=compressed, notes=notes)


def compare_strategies_on_files(pool: str | Path, eval_set: str | Path, *, template: str,
                                label_field: str = "label", limit: int | None = None, k: int = 8,
                                compress_rate: float = 0.25, model: str | None = None,
                                progress: Callable[[str], None] | None = None) -> PromptResults:
    """:func:`compare_strategies` on a labelled pool and evaluation set given as files: the
    first ``limit`` queries (all without it), the template by name or file (its label words
    from the pool's labels), the task named after the evaluation file."""
    pool_rows = read_labelled(pool, label_field=label_field)
    test = read_labelled(eval_set, label_field=label_field)
    test = test.subset(range(min(limit or len(test), len(test))))
    prompt = load_template(template, sorted(set(pool_rows.labels)))
    return compare_strategies(pool_rows, test, prompt, task=Path(eval_set).name, k=k,
                              compress_rate=compress_rate, model=model, progress=progress)
