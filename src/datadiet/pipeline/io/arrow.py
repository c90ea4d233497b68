"""Arrow arrays from NumPy and back, without pandas, and ``datasets.Dataset`` only on demand.

pyarrow's generic conversions (``pa.array``, ``to_numpy`` of booleans) pass through its pandas
shim, which imports pandas on first use: 0.14 s and 30 MiB, more than a file-to-file curate of
50,000 documents spends on its whole reduce. The few conversions the streamed curate needs are
built from buffers here instead; ``datasets`` (0.7 CPU-seconds and 75 MiB to import) is imported
only by a caller that asks for a ``Dataset``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from datasets import Dataset


def arrow_ints(values: np.ndarray) -> pa.Array:
    """``values`` (any integer dtype) as an Arrow int64 array (zero-copy when already int64)."""
    data = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def arrow_floats(values: np.ndarray) -> pa.Array:
    """``values`` as an Arrow float64 array; NaN stays NaN (a value, not a null)."""
    data = np.ascontiguousarray(values, np.float64)
    return pa.Array.from_buffers(pa.float64(), len(data), [None, pa.py_buffer(data)])


def arrow_bools(mask: np.ndarray) -> pa.Array:
    """A NumPy bool mask as an Arrow boolean array (for ``filter``)."""
    mask = np.asarray(mask, bool)
    bits = np.packbits(mask, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def arrow_strings(values: Sequence[str]) -> pa.Array:
    """Python strings (valid UTF-8, no None) as an Arrow string array."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), len(encoded), [
            None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))])
    return pa.Array.from_buffers(pa.large_string(), len(encoded), [
        None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]).cast(pa.string())


def arrow_repeated(text: str, n: int) -> pa.Array:
    """``text`` ``n`` times as an Arrow string array (a one-word dictionary, expanded by Arrow:
    no Python object per row)."""
    indices = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(np.zeros(n, np.int32))])
    return pa.DictionaryArray.from_arrays(indices, arrow_strings([text])).cast(pa.string())


def numpy_ints(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow integer array without nulls as NumPy (a view of its buffer when it can)."""
    if isinstance(array, pa.ChunkedArray):
        parts = [numpy_ints(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if array.null_count:
        raise ValueError("numpy_ints: the array has nulls")
    dtype = _NUMPY_INT[array.type.id]
    return np.frombuffer(array.buffers()[1], dtype)[array.offset : array.offset + len(array)]


_NUMPY_INT = {pa.int8().id: np.int8, pa.int16().id: np.int16, pa.int32().id: np.int32,
              pa.int64().id: np.int64, pa.uint8().id: np.uint8, pa.uint16().id: np.uint16,
              pa.uint32().id: np.uint32, pa.uint64().id: np.uint64}


def null_mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which entries of ``array`` are null, as a NumPy bool array.

    Read from the validity bitmap directly: pyarrow's own conversions of a boolean array go
    through its pandas shim, which imports pandas (0.14 s and 30 MiB) on first use, a cost a
    file-to-file run should not pay for a column without nulls.
    """
    if isinstance(array, pa.ChunkedArray):
        parts = [null_mask(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, bool)
    n = len(array)
    validity = array.buffers()[0] if array.null_count else None
    if validity is None:
        return np.zeros(n, bool) if array.null_count == 0 else np.ones(n, bool)
    bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
    return ~bits[array.offset : array.offset + n].astype(bool)


def is_dataset(obj: object) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset``, without importing ``datasets``: nothing can be
    one unless the caller imported it. Why: that import costs 0.7 CPU-seconds and 75 MiB, more
    than deduplicating 50,000 documents, and a command reading files never needs it."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(obj, module.Dataset)


def as_dataset(table: pa.Table, fingerprint: str | None = None) -> Dataset:
    """``table`` as an in-memory ``datasets.Dataset`` (``datasets`` is imported here, when a
    caller first asks for one). In memory, so ``datasets`` never writes cache files beside a
    mapped scratch file, which the reader may then delete at once."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(table), fingerprint=fingerprint)
