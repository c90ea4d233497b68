"""Selection: what one selector decided about one dataset.

Every selector returns a :class:`Selection`. It is deliberately columnar (NumPy arrays, one entry
per input row) rather than a list of dicts, so that a ten-million-row corpus costs a few bytes
per row, and so that selections compose by plain index arithmetic.

The rule of the house: nothing is removed without a reason. A reason is a *kind* (counted in the
manifest, e.g. ``"quality:symbol_ratio"`` or ``"minhash-duplicate-of"``) plus an optional per-row
*detail* (e.g. the id of the document a duplicate was folded into). The full per-row reason string
is ``kind`` or ``f"{kind}:{detail}"`` — ``"minhash-duplicate-of:doc-17"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from datadiet.pipeline.io.arrow import arrow_strings


@dataclass
class Selection:
    """Keep/remove decision for each of ``n_rows`` rows of one dataset.

    Attributes:
        n_rows: rows the selector saw.
        keep: boolean mask, ``True`` for kept rows.
        reason_kind: for each row, the removal kind (``""`` for kept rows). A NumPy ``object``
            array so that kinds are shared Python strings, not copies.
        reason_detail: optional per-row detail (``""`` where none), e.g. the id a duplicate
            points to.
        scores: optional per-row score (``NaN`` where a method has none); higher means "more
            worth keeping" unless the selector documents otherwise.
        stats: free-form numbers the step wants in the manifest (thresholds found, clusters...).
    """

    n_rows: int
    keep: np.ndarray
    reason_kind: np.ndarray
    reason_detail: np.ndarray | None = None
    scores: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keep = np.asarray(self.keep, dtype=bool)
        if self.keep.shape != (self.n_rows,):
            raise ValueError(f"keep mask has shape {self.keep.shape}, expected ({self.n_rows},)")
        if self.reason_kind.shape != (self.n_rows,):
            raise ValueError("reason_kind must have one entry per row")
        missing = (~self.keep) & (self.reason_kind == "")
        if missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise ValueError(f"row {first} is removed without a reason")
        if self.scores is not None and len(self.scores) != self.n_rows:
            raise ValueError("scores must have one entry per row")

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def keep_all(cls, n_rows: int, scores: np.ndarray | None = None) -> Selection:
        return cls(n_rows, np.ones(n_rows, bool), np.full(n_rows, "", dtype=object), scores=scores)

    @classmethod
    def from_mask(
        cls,
        keep: np.ndarray,
        kind: str | np.ndarray,
        detail: np.ndarray | None = None,
        scores: np.ndarray | None = None,
        stats: dict | None = None,
    ) -> Selection:
        """Build from a keep mask and one removal kind (or one kind per row)."""
        keep = np.asarray(keep, dtype=bool)
        kinds = np.full(len(keep), "", dtype=object)
        if isinstance(kind, str):
            kinds[~keep] = kind
        else:
            kinds[~keep] = np.asarray(kind, dtype=object)[~keep]
        if detail is not None:
            detail = np.asarray(detail, dtype=object).copy()
            detail[keep] = ""
        return cls(len(keep), keep, kinds, detail, scores, stats or {})

    @classmethod
    def from_kept_indices(
        cls, n_rows: int, kept: Sequence[int] | np.ndarray, kind: str, **kw
    ) -> Selection:
        keep = np.zeros(n_rows, bool)
        keep[np.asarray(kept, dtype=np.int64)] = True
        return cls.from_mask(keep, kind, **kw)

    # -- views ----------------------------------------------------------------------------

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.keep)

    @property
    def removed_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def reason(self, row: int) -> str:
        """The full reason string for one row (``""`` if kept)."""
        detail = None if self.reason_detail is None else self.reason_detail[row]
        return _reason_text(self.reason_kind[row], detail)

    def reasons(self, rows: np.ndarray) -> pa.Array:
        """The reason strings of ``rows`` (as :meth:`reason`) in one Arrow string array.

        Why not ``[reason(i) for i in rows]``: a dedup step removes millions of rows, and a new
        Python string per row (kind, colon and the kept row's id) cost the in-process run about
        200 bytes a removed row at its peak. Rows share kinds and details (the kept row a whole
        cluster names), so each distinct reason is written once, into a dictionary, and Arrow
        expands it into the column without Python objects.
        """
        kinds = self.reason_kind[rows].tolist()
        details = ([None] * len(kinds) if self.reason_detail is None
                   else self.reason_detail[rows].tolist())
        codes: dict[tuple[object, object], int] = {}
        pairs = zip(kinds, details, strict=True)
        index = np.fromiter((codes.setdefault(pair, len(codes)) for pair in pairs), np.int32,
                            len(kinds))
        dictionary = arrow_strings([_reason_text(kind, detail) for kind, detail in codes])
        indices = pa.Array.from_buffers(pa.int32(), len(index), [None, pa.py_buffer(index)])
        return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())

    def removed_by_kind(self) -> dict[str, int]:
        counts = Counter(self.reason_kind[~self.keep].tolist())
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def then(self, inner: Selection) -> Selection:
        """Compose: ``inner`` was computed on the rows this selection kept.

        Returns a selection over this selection's input where a row is kept only if both kept it,
        and a removed row carries the reason of whichever step removed it.
        """
        kept_idx = self.kept_indices
        if inner.n_rows != len(kept_idx):
            raise ValueError(f"inner selection saw {inner.n_rows} rows, outer kept {len(kept_idx)}")
        keep = self.keep.copy()
        keep[kept_idx] = inner.keep
        kinds = self.reason_kind.copy()
        kinds[kept_idx] = inner.reason_kind
        detail = None
        if self.reason_detail is not None or inner.reason_detail is not None:
            detail = (
                self.reason_detail.copy()
                if self.reason_detail is not None
                else np.full(self.n_rows, "", dtype=object)
            )
            detail[kept_idx] = (
                inner.reason_detail
                if inner.reason_detail is not None
                else np.full(inner.n_rows, "", dtype=object)
            )
        scores = None
        if inner.scores is not None:
            scores = np.full(self.n_rows, np.nan)
            scores[kept_idx] = inner.scores
        return Selection(self.n_rows, keep, kinds, detail, scores, dict(inner.stats))


def _reason_text(kind: object, detail: object) -> str:
    """One reason string: the kind, and the detail after a colon where there is one."""
    if not kind:
        return ""
    return f"{kind}:{detail}" if detail else str(kind)
