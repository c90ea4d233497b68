"""THE id rule: a source id, or a content hash with ``-2``, ``-3`` for repeats; a repeated source
id is an error that names both rows (or, asked for, renamed the same way).

Every input path (files, a ``Dataset``, a list of dicts, a saved dataset, the hub) gives ids
through :func:`unique_ids`, so the same records get the same ids however they arrive.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from datadiet.pipeline.errors import DataError
from datadiet.pipeline.io.arrow import numpy_ints
from datadiet.pipeline.io.layout import OnDuplicateId


def content_id(text: str) -> str:
    """A stable id for a record without one: 16 hex digits of xxh3-64 of the text."""
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogatepass"))


def _all_distinct(ids: pa.Array) -> bool:
    """Whether no id repeats: sorted, no two neighbours are equal.

    Why a sort and not Arrow's hash table (``dictionary_encode``), which also names the
    repeats: the table copies every id into its memo at once, about 150 bytes an id, and at
    5M documents that was the peak of the whole in-process run (+900 MiB at the end of the
    read). The sort holds 8 bytes an id plus one sorted copy, and took half the time (0.5 vs
    1.0 s for 5M ids). The hash table runs only when some id does repeat.
    """
    if len(ids) < 2:
        return True
    ordered = ids.take(pc.array_sort_indices(ids))
    return not pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1)).true_count


def unique_ids(
    ids: pa.Array | pa.ChunkedArray,
    from_data: np.ndarray,
    locate: Callable[[int], str],
    on_duplicate_id: OnDuplicateId = "error",
) -> tuple[pa.Array | None, int]:
    """THE id rule: content-hash repeats get ``-2``, ``-3``; a repeated source id is an error.

    ``from_data[i]`` says whether row ``i``'s id came from the data (else it is a content
    hash). Returns the new id column (``None`` when every id is already unique) and how many
    source ids were renamed. The common case (all unique) is one sort in Arrow's C++ and a few
    bytes per row; repeats are found and renamed in Arrow's hash tables.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    n = len(ids)
    if _all_distinct(ids):
        return None, 0
    encoded = pc.dictionary_encode(ids)  # some id repeats: which, and where first
    codes = numpy_ints(encoded.indices)
    counts = np.bincount(codes)
    repeated = np.flatnonzero(counts[codes] > 1)
    order = repeated[np.argsort(codes[repeated], kind="stable")]
    sorted_codes = codes[order]
    group_start = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    first_pos = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    rank = np.arange(len(order)) - first_pos
    later = rank > 0
    rows, ranks, firsts = order[later], rank[later], order[first_pos[later]]
    renamed = 0
    source_repeats = from_data[rows]
    if source_repeats.any():
        if on_duplicate_id != "rename":
            i = int(np.flatnonzero(source_repeats)[np.argmin(rows[source_repeats])])
            row, first = int(rows[i]), int(firsts[i])
            raise DataError(
                f"{locate(row)}: repeated id {ids[row].as_py()!r}, first at {locate(first)} "
                "(ids must be unique; pass --on-duplicate-id rename to keep both, suffixed -2, -3)"
            )
        renamed = int(source_repeats.sum())
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    old = ids.take(pa.array(rows)).to_pylist()
    # replace_with_mask fills the masked slots in row order: sort the suffixes the same way.
    by_row = np.argsort(rows)
    suffixed = [f"{old[j]}-{int(ranks[j]) + 1}" for j in by_row]
    new = pc.replace_with_mask(ids, pa.array(mask), pa.array(suffixed, pa.string()))
    if len(pc.dictionary_encode(new).dictionary) != n:  # a suffix met an id of the data
        unique_ids(new, np.ones(n, dtype=bool), locate, "error")  # raises, naming both rows
    return new, renamed
