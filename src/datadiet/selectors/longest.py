"""The longest responses: the free baseline every fine-tuning selector must beat.

Zhao et al. 2024 ("Long Is More for Alignment") keep the 1,000 instruction rows with the
longest responses and match or beat far costlier selectors (LIMA, AlpaGasus) on alignment
benchmarks. It costs no model FLOPs, so a scorer that cannot beat it at the same budget has not
paid for itself. Length is the response's word count (every assistant turn of a chat row);
ties keep the earlier row.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep
from datadiet.selectors.ifd import conversation_rows

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["Longest"]

_WORD = re.compile(r"\w+")
_MARKER = re.compile(r"<\|[^|]*\|>")


@register_step
class Longest(Step):
    """Keep ``keep`` rows (a fraction or a count) with the most response words.

    Removed rows: ``longest:shorter``. Scores: the response word count of every row.
    """

    name = "longest"

    def __init__(self, *, keep: float | int = 0.5) -> None:
        validate_keep(keep)
        self.keep = keep

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        n = len(ds)
        if n == 0:
            return Selection.keep_all(0)
        lengths = np.array([sum(len(_WORD.findall(_MARKER.sub("", response)))
                                for _, response in pairs)
                            for pairs in conversation_rows(ds, ctx, self.name)], dtype=np.float64)
        k = resolve_keep(self.keep, n)
        kept = np.argsort(-lengths, kind="stable")[:k]
        mask = np.zeros(n, dtype=bool)
        mask[kept] = True
        reasons = np.where(mask, "", "longest:shorter").astype(object)
        return Selection.from_mask(mask, reasons, scores=lengths, stats={"k": int(k)})
