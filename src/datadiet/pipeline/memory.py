"""Handing freed memory back to the system between the phases of a long run.

Why: an in-process curate reads millions of rows through Arrow (mimalloc or jemalloc) while
NumPy and the native kernels allocate through glibc's malloc. Both allocators keep memory the
program has freed, for reuse: after reading 5M documents the process held about 1.5 GB of
freed memory, more than its live data, so the peak of the run grew with the corpus even
though every feature spills. Releasing it at the phase boundaries (after the read, after each
step's reduce) costs milliseconds and keeps the resident memory what the next phase needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import pyarrow as pa


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_unused_memory() -> None:
    """Return the memory both allocators hold free to the system (where they can)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
