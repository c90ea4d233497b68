"""Helpers every selector shares: the one budget rule and the one way to name rows.

Why one budget rule: "method vs random at the same budget" is only a fair comparison if every
step turns ``keep`` into the same number of rows. The rule, everywhere:

* a float in ``[0, 1]`` is a fraction of the rows, rounded half up, and a positive fraction of a
  non-empty input keeps at least one row (``0.5`` of 5 rows is 3);
* an int is a count, capped at the number of rows (``1`` is one row, ``1.0`` is every row);
* a bool, a negative number or a fraction above 1 is an error, raised when the spec is built.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from datadiet.pipeline.io import arrow_ints

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["resolve_keep", "row_ids", "validate_keep"]


def validate_keep(keep: float | int) -> None:
    """Raise ``ValueError`` for a ``keep`` that no input size could make valid."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise ValueError(f"keep must be a fraction (float in [0, 1]) or a count (int), got {keep!r}")
    if isinstance(keep, numbers.Integral):
        if keep < 0:
            raise ValueError(f"keep count must be >= 0, got {keep}")
    elif not 0.0 <= float(keep) <= 1.0 or math.isnan(float(keep)):
        raise ValueError(f"keep fraction must be in [0, 1], got {keep}; pass an int for a count")


def resolve_keep(keep: float | int, n_rows: int) -> int:
    """Turn a ``keep`` budget into a row count by the one rule in this module's docstring."""
    validate_keep(keep)
    if isinstance(keep, numbers.Integral):
        return min(int(keep), n_rows)
    if n_rows == 0 or float(keep) == 0.0:
        return 0
    return min(n_rows, max(1, math.floor(float(keep) * n_rows + 0.5)))


def row_ids(ds: Dataset | pa.Table, id_field: str, rows: np.ndarray) -> np.ndarray:
    """The ids of ``rows`` as an object array of strings.

    Takes just those rows from the (memory-mapped) Arrow column, with no Python object per row
    of the dataset. ``ds`` is a ``Dataset`` or an Arrow table (what a step's reduce half sees
    in a table run: the live rows' ids). Without ``id_field`` the row index stands in, as a
    string, so reasons still point somewhere a user can look up.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.empty(0, dtype=object)
    if id_field not in ds.column_names:
        return np.array([str(r) for r in rows.tolist()], dtype=object)
    if isinstance(ds, pa.Table):
        column = ds.column(id_field)
    else:
        column = ds.select_columns([id_field]).with_format("arrow")[id_field]
    values = column.take(arrow_ints(rows)).to_pylist()
    return np.array([str(v) for v in values], dtype=object)
