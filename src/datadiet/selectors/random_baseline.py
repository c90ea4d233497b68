"""The random baseline: keep a uniformly random subset of a given size.

Why it exists: every data-selection paper's first table is "method vs. random at the same
budget". A selector that cannot beat a seeded random subset of the same size is not worth its
compute, so the baseline lives behind the same protocol and is as cheap and reproducible as
possible.
"""

from __future__ import annotations

import numbers

import numpy as np
from datasets import Dataset

from datadiet.pipeline.selection import Selection
from datadiet.selectors.base import Step, StepContext, register_step


def resolve_keep(keep: float | int, n_rows: int) -> int:
    """Turn a ``keep`` budget into a row count.

    A float in ``[0, 1]`` is a fraction of ``n_rows`` (rounded to the nearest row); an int is an
    absolute count, capped at ``n_rows``. The type decides, so ``1.0`` means "everything" and
    ``1`` means "one row" — as they read in a YAML spec.
    """
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise TypeError(f"keep must be a fraction (float) or a count (int), got {keep!r}")
    if isinstance(keep, numbers.Integral):
        if keep < 0:
            raise ValueError(f"keep count must be >= 0, got {keep}")
        return min(int(keep), n_rows)
    if not 0.0 <= float(keep) <= 1.0:
        raise ValueError(f"keep fraction must be in [0, 1], got {keep}; pass an int for a count")
    return min(n_rows, int(round(float(keep) * n_rows)))


@register_step
class RandomSelect(Step):
    """Keep ``keep`` rows (a fraction or a count) drawn uniformly without replacement.

    ``seed=None`` uses the run's seed (``ctx.seed``); the seed actually used is recorded in the
    selection's stats so the manifest can repeat the draw.
    """

    name = "random"

    def __init__(self, *, keep: float | int = 0.5, seed: int | None = None) -> None:
        resolve_keep(keep, 0)  # validate early: a bad spec fails when built, not mid-run
        self.keep = keep
        self.seed = seed

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        n = len(ds)
        k = resolve_keep(self.keep, n)
        seed = ctx.seed if self.seed is None else self.seed
        rng = np.random.default_rng(seed)
        kept = rng.choice(n, size=k, replace=False) if k else np.empty(0, np.int64)
        return Selection.from_kept_indices(
            n, kept, "random:not-sampled", stats={"k": k, "seed": seed}
        )
