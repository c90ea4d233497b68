"""numba for the quality features: kernels declared with :func:`jit` compile on first use.

Why a module of its own: numba is not a hashing kernel. The hashing kernels (exact-dedup
normalisation, MinHash, LSH) are C (:mod:`datadiet.selectors.native`) with a NumPy fallback
(:mod:`datadiet.selectors.hashing` says why); only the quality features
(:mod:`datadiet.selectors.quality`) are compiled with numba, so the machinery lives here, beside
the two UTF-8 helpers those kernels share.

numba is optional: :func:`numba_enabled` is False without it, with ``DATADIET_NUMBA=0``, or for
a small call in a process that has not loaded numba yet, and every caller has a NumPy/Python
path that gives the same result. Kernels are compiled once and cached on disk (``cache=True``:
the first batch of a run does not pay for compilation); parallel kernels use all the process's
numba threads (``NUMBA_NUM_THREADS``; set it to 1 in a worker that already runs one process per
core).

numba is imported by the first call that runs a kernel, not when a selector module is
imported: its import and first cached-kernel load cost about half a CPU-second and 130 MiB (it
maps LLVM and pulls in ``scipy.linalg``), which a command that runs no kernel (``datadiet why``,
a spec of model steps, a small input, ``DATADIET_NUMBA=0``) should not pay. See :func:`jit`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from datadiet.selectors.hashing import FMIX_MULT_1, FMIX_MULT_2

__all__ = ["KERNEL_MIN_ROWS", "NUMBA_INSTALLED", "LazyKernel", "jit", "nb_decode", "nb_fmix64",
           "numba_enabled", "prange"]

#: Whether numba is installed, found without importing it (finding a module is cheap).
NUMBA_INSTALLED = importlib.util.find_spec("numba") is not None


class _Prange:
    """``prange`` in a kernel module before numba is loaded: the loader rebinds the module's
    ``prange`` to ``numba.prange`` before any kernel compiles. Called as Python code it is
    ``range``, so a kernel run without numba loops the same way."""

    def __call__(self, *args: int) -> range:
        return range(*args)


prange: Any = _Prange()

#: Fewer texts than this in one call, in a process that has run no kernel yet: the NumPy/Python
#: path. Importing numba and loading its first cached kernels costs about 0.5-0.9 CPU-seconds
#: and 130 MiB; below ~2,000 texts the uncompiled paths finish sooner, in less memory, with the
#: same results (benchmarks/RESULTS.md, "Start-up"). The steps call kernels in batches of at
#: least ``KERNEL_BATCH`` texts, so a bigger input loads numba on its first batch.
KERNEL_MIN_ROWS = 2000


def numba_enabled(rows: int | None = None) -> bool:
    """Whether a call over ``rows`` texts (or rows of features) runs the compiled kernels.

    ``DATADIET_NUMBA=0``: never; ``DATADIET_NUMBA=1``: always (when numba is installed);
    otherwise when numba is installed and the call is big enough to pay for loading numba
    (``rows`` unknown, at least ``KERNEL_MIN_ROWS``, or a kernel already ran in this process).
    Both paths give identical results, so the choice is only about time and memory. A True
    answer loads numba if it is not loaded yet; a numba that fails to import (built for
    another NumPy, say) makes the answer False from then on.
    """
    if not NUMBA_INSTALLED or _numba_broken:
        return False
    setting = os.environ.get("DATADIET_NUMBA", "")
    if setting == "0":
        return False
    if _numba is not None:
        return True
    wanted = setting == "1" or rows is None or rows >= KERNEL_MIN_ROWS
    return wanted and _load_numba()


class LazyKernel:
    """A kernel declared with :func:`jit` before numba was imported.

    The first call of any lazy kernel imports numba, makes every declared kernel a numba
    dispatcher, and rebinds each kernel module's names (its kernels, the kernels it imported,
    ``prange``) to the compiled objects, so that kernels calling kernels compile against
    dispatchers and later calls from Python skip this wrapper.
    """

    def __init__(self, py_func: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func = py_func
        self.options = options
        self.dispatcher: Any = None
        functools.update_wrapper(self, py_func)

    def __call__(self, *args: Any) -> Any:
        if self.dispatcher is None and not _load_numba():
            return self.py_func(*args)  # numba would not import: the same code, in Python
        return self.dispatcher(*args)

    def __getattr__(self, name: str) -> Any:  # numba's own attributes (signatures, ...)
        if name.startswith("__") or name in ("py_func", "options", "dispatcher"):
            raise AttributeError(name)
        if self.dispatcher is None and not _load_numba():
            raise AttributeError(f"{name!r}: numba failed to import")
        return getattr(self.dispatcher, name)


_DECLARED: list[LazyKernel] = []
_NUMBA_LOCK = threading.Lock()
_numba: Any = None  # the numba module, once a kernel has been called
_numba_broken = False  # numba is installed but its import failed


def _rebind(namespace: dict[str, Any]) -> None:
    """Point a kernel module's lazy names at the compiled objects."""
    for name, value in list(namespace.items()):
        if isinstance(value, LazyKernel):
            namespace[name] = value.dispatcher
        elif isinstance(value, _Prange):
            namespace[name] = _numba.prange


def _load_numba() -> bool:
    """Import numba and turn every declared kernel into a dispatcher (compiled on first call,
    from the disk cache when it has one); False if numba does not import."""
    global _numba, _numba_broken
    with _NUMBA_LOCK:
        if _numba is not None or _numba_broken:
            return _numba is not None
        try:
            import numba
        except ImportError:
            _numba_broken = True
            return False
        for kernel in _DECLARED:
            kernel.dispatcher = numba.njit(**kernel.options)(kernel.py_func)
        _numba = numba
        for module in {kernel.py_func.__module__ for kernel in _DECLARED}:
            _rebind(vars(sys.modules[module]))
        return True


def jit(parallel: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """numba's ``njit`` with the package's settings (disk cache, no GIL, no bounds checks),
    imported when a kernel is first called (a :class:`LazyKernel` until then).

    Without numba the function is returned as is; callers only call it when
    :func:`numba_enabled` says so. A kernel module takes ``prange`` from this module.
    """
    options = {"cache": True, "nogil": True, "boundscheck": False, "parallel": parallel}

    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not NUMBA_INSTALLED or _numba_broken:  # pragma: no cover
            return fn
        with _NUMBA_LOCK:
            if _numba is None:
                kernel = LazyKernel(fn, options)
                _DECLARED.append(kernel)
                return kernel
        _rebind(fn.__globals__)  # a module imported after the first kernel call
        return _numba.njit(**options)(fn)

    return declare




@jit()
def nb_fmix64(x):  # noqa: ANN001, ANN202 - numba-typed
    """:func:`fmix64` of one ``uint64``, for compiled kernels."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(FMIX_MULT_1)
    x ^= x >> np.uint64(33)
    x *= np.uint64(FMIX_MULT_2)
    x ^= x >> np.uint64(33)
    return x


@jit()
def nb_decode(buf, i):  # noqa: ANN001, ANN202 - numba-typed
    """The code point that starts at ``buf[i]`` (well-formed UTF-8) and the index after it."""
    c0 = np.int64(buf[i])
    if c0 < 0x80:
        return c0, i + 1
    if c0 < 0xE0:
        return ((c0 & 0x1F) << 6) | (np.int64(buf[i + 1]) & 0x3F), i + 2
    if c0 < 0xF0:
        cp = ((c0 & 0x0F) << 12) | ((np.int64(buf[i + 1]) & 0x3F) << 6)
        return cp | (np.int64(buf[i + 2]) & 0x3F), i + 3
    cp = ((c0 & 0x07) << 18) | ((np.int64(buf[i + 1]) & 0x3F) << 12)
    cp |= (np.int64(buf[i + 2]) & 0x3F) << 6
    return cp | (np.int64(buf[i + 3]) & 0x3F), i + 4
