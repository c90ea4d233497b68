"""The random baseline: keep a uniformly random subset of a given size.

Why it exists: every data-selection paper's first table is "method vs. random at the same
budget". A selector that cannot beat a seeded random subset of the same size is not worth its
compute, so the baseline lives behind the same protocol and is as cheap and reproducible as
possible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.selectors.common import resolve_keep, validate_keep

if TYPE_CHECKING:
    from datasets import Dataset


@register_step
class RandomSelect(Step):
    """Keep ``keep`` rows (a fraction or a count) drawn uniformly without replacement.

    ``seed=None`` uses the run's seed (``ctx.seed``); the seed actually used is recorded in the
    selection's stats so the manifest can repeat the draw.
    """

    name = "random"

    def __init__(self, *, keep: float | int = 0.5, seed: int | None = None) -> None:
        validate_keep(keep)  # validate early: a bad spec fails when built, not mid-run
        self.keep = keep
        self.seed = seed

    def map_columns(self, view: RecordView, columns: list[str]) -> list[str]:
        return []  # the draw reads nothing of a row

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        return {}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        """The draw over the live rows: it depends on their number and the seed alone."""
        n = len(ds)
        k = resolve_keep(self.keep, n)
        seed = ctx.seed if self.seed is None else self.seed
        rng = np.random.default_rng(seed)
        kept = rng.choice(n, size=k, replace=False) if k else np.empty(0, np.int64)
        return Selection.from_kept_indices(
            n, kept, "random:not-sampled", stats={"k": k, "seed": seed}
        )
