"""The longest responses: the free baseline every fine-tuning selector must beat.

Zhao et al. 2024 ("Long Is More for Alignment") keep the 1,000 instruction rows with the
longest responses and match or beat far costlier selectors (LIMA, AlpaGasus) on alignment
benchmarks. It costs no model FLOPs, so a scorer that cannot beat it at the same budget has not
paid for itself. Length is the response's word count (every assistant turn of a chat row);
ties keep the earlier row.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep

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
    needs_instruction_data = True

    def __init__(self, *, keep: float | int = 0.5) -> None:
        validate_keep(keep)
        self.keep = keep

    def map_columns(self, view: RecordView, columns: list[str]) -> list[str]:
        return view.turn_columns(columns, self.name)

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's response words (every assistant turn), as float64."""
        return {"words": np.array([response_words(pairs)
                                   for pairs in view.turns(batch, self.name)], dtype=np.float64)}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        lengths = np.asarray(features["words"], dtype=np.float64)
        n = len(lengths)
        if n == 0:
            return Selection.keep_all(0)
        k = resolve_keep(self.keep, n)
        kept = np.argsort(-lengths, kind="stable")[:k]
        mask = np.zeros(n, dtype=bool)
        mask[kept] = True
        reasons = np.where(mask, "", "longest:shorter").astype(object)
        return Selection.from_mask(mask, reasons, scores=lengths, stats={"k": int(k)})


def response_words(pairs: list[tuple[str, str]]) -> int:
    """Words of a row's responses, special markers left out."""
    return sum(len(_WORD.findall(_MARKER.sub("", response))) for _, response in pairs)
