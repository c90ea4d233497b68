"""The hashing kernels as a small C library, loaded with ctypes: no compiler at run time, no
LLVM in the process, every core through plain threads.

Why this exists beside the numba kernels: ``datadiet curate`` on a file is a short process, and
numba's import and first cached-kernel load (about 0.5 CPU-seconds and 130 MiB of LLVM) cost
as much as deduplicating a few hundred thousand documents. The C twins of the exact-dedup,
MinHash and LSH kernels (``hashkernels.c``) load in a millisecond, and ctypes releases the GIL
during each call, so a batch split into document ranges runs on all cores from a thread pool.

The library is built once, at install time (``make install`` runs ``python -m
datadiet.selectors.native build``; any C compiler will do). Without it — no compiler, a wheel,
``DATADIET_NATIVE=0`` — the callers use numba, then NumPy; every path gives the same bits, and
``tests/selectors/test_native_kernels.py`` holds them to that.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["LIBRARY", "available", "bucket_pairs", "build", "docs_with", "minhash_shard",
           "normalize", "pair_jaccard", "threads"]

SOURCE = Path(__file__).with_name("hashkernels.c")
LIBRARY = Path(__file__).with_name("_hashkernels.so")
ABI_VERSION = 1
#: Documents per piece of work handed to a thread: small enough that two threads finish
#: together on skewed lengths, big enough that a call's overhead (microseconds) is noise.
PIECE = 2048

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "dd_normalize": (None, [_P, _P, _I, _I, _P, _P, _I, _P, _P, _P, _P]),
    "dd_docs_with": (None, [_P, _P, _I, _I, _P, _I, ctypes.c_int, _P]),
    "dd_minhash_shard": (ctypes.c_int, [_P, _P, _I, _I, _P, _P, _I, _P, _P, _I, _P,
                                        ctypes.c_uint64, _P, _P, _I, _P, _I, _I,
                                        ctypes.c_uint64, _P, _P, _P]),
    "dd_pair_jaccard": (None, [_P, _I, _P, _I, _I, _P]),
    "dd_bucket_pairs": (_I, [_P, _I, _P, _I, ctypes.c_int, _I, _I,
                             ctypes.POINTER(ctypes.POINTER(ctypes.c_int64))]),
    "dd_free": (None, [_P]),
    "dd_abi_version": (ctypes.c_int, []),
}


def build(compiler: str | None = None, quiet: bool = False) -> Path:
    """Compile ``hashkernels.c`` into ``_hashkernels.so`` next to it (atomically: a reader never
    sees half a library). Raises ``RuntimeError`` naming the compiler's complaint."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH; the numba/NumPy kernels run instead")
    fd, tmp = tempfile.mkstemp(prefix="._hashkernels-", suffix=".so", dir=LIBRARY.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, "-O3", "-fPIC", "-shared", "-o", tmp, str(SOURCE)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755 & ~_umask())
        os.replace(tmp, LIBRARY)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _library.cache_clear()
    if not quiet:
        print(f"built {LIBRARY}", file=sys.stderr)
    return LIBRARY


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("DATADIET_NATIVE", "") == "0" or not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            return None
        fn.restype = restype
        fn.argtypes = argtypes
    if lib.dd_abi_version() != ABI_VERSION:  # a library left from another version
        return None
    return lib


def available() -> bool:
    """Whether the C kernels are built and loadable (and not switched off)."""
    return _library() is not None


def threads() -> int:
    """Threads a batch is split over: ``DATADIET_THREADS``, else the cores this process may use."""
    setting = os.environ.get("DATADIET_THREADS", "")
    if setting.isdigit() and int(setting) > 0:
        return int(setting)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="datadiet-kernel")


def _over_ranges(n: int, work: Callable[[int, int], object]) -> None:
    """``work(lo, hi)`` over ``[0, n)`` in pieces, on ``threads()`` threads (inline for one)."""
    workers = threads()
    pieces = [(lo, min(n, lo + PIECE)) for lo in range(0, n, PIECE)]
    if workers == 1 or len(pieces) < 2:
        for lo, hi in pieces:
            work(lo, hi)
        return
    for future in [_pool(workers).submit(work, lo, hi) for lo, hi in pieces]:
        future.result()


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("the C kernels are not built: run `python -m datadiet.selectors.native build`")
    return lib


def normalize(buf: np.ndarray, starts: np.ndarray, mode: np.ndarray, fold: np.ndarray,
              word: np.ndarray, ascii_word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Twin of ``exact._nb_normalize``: the normalised bytes (in each text's own span) and
    lengths (-1 where Python must fold)."""
    lib = _lib()
    buf = np.ascontiguousarray(buf, np.uint8)
    starts = np.ascontiguousarray(starts, np.int64)
    mode = np.ascontiguousarray(mode, np.uint8)
    fold = np.ascontiguousarray(fold, np.uint32)
    word = np.ascontiguousarray(word, np.bool_)
    ascii_word = np.ascontiguousarray(ascii_word, np.uint8)
    n = len(starts) - 1
    out = np.empty(len(buf), np.uint8)
    lengths = np.empty(n, np.int64)
    args = (_ptr(mode), _ptr(fold), len(fold), _ptr(word), _ptr(ascii_word), _ptr(out),
            _ptr(lengths))
    _over_ranges(n, lambda lo, hi: lib.dd_normalize(_ptr(buf), _ptr(starts), lo, hi, *args))
    return out, lengths


def docs_with(buf: np.ndarray, offsets: np.ndarray, needles: np.ndarray,
              any_non_ascii: bool) -> np.ndarray:
    """Twin of ``hashing._nb_docs_with``: which texts hold a non-ASCII byte or a needle."""
    lib = _lib()
    buf = np.ascontiguousarray(buf, np.uint8)
    offsets = np.ascontiguousarray(offsets, np.int64)
    needles = np.ascontiguousarray(needles, np.uint8).reshape(-1, 2)
    n = len(offsets) - 1
    found = np.zeros(n, np.bool_)
    _over_ranges(n, lambda lo, hi: lib.dd_docs_with(
        _ptr(buf), _ptr(offsets), lo, hi, _ptr(needles), len(needles), int(any_non_ascii),
        _ptr(found)))
    return found


def minhash_shard(buf: np.ndarray, offsets: np.ndarray, word: np.ndarray, lower: np.ndarray,
                  ascii_word: np.ndarray, mult: np.ndarray, ngram: int, pos: np.ndarray,
                  salt: int, a: np.ndarray, b: np.ndarray, band_mult: np.ndarray,
                  band_tag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of ``minhash._nb_shard``: signatures, band keys and shingle counts of a batch."""
    lib = _lib()
    buf = np.ascontiguousarray(buf, np.uint8)
    offsets = np.ascontiguousarray(offsets, np.int64)
    word = np.ascontiguousarray(word, np.bool_)
    lower = np.ascontiguousarray(lower, np.uint32)
    ascii_word = np.ascontiguousarray(ascii_word, np.uint8)
    mult = np.ascontiguousarray(mult, np.uint64)
    pos = np.ascontiguousarray(pos, np.uint64)
    a = np.ascontiguousarray(a, np.uint32)
    b = np.ascontiguousarray(b, np.uint32)
    band_mult = np.ascontiguousarray(band_mult, np.uint64)
    n = len(offsets) - 1
    bands, rows = band_mult.shape
    sigs = np.full((n, len(a)), np.uint32(0xFFFFFFFF), np.uint32)
    keys = np.empty((n, bands), np.uint64)
    counts = np.empty(n, np.int64)
    failed: list[int] = []

    def work(lo: int, hi: int) -> None:
        if lib.dd_minhash_shard(
                _ptr(buf), _ptr(offsets), lo, hi, _ptr(word), _ptr(lower), len(lower),
                _ptr(ascii_word), _ptr(mult), ngram, _ptr(pos), int(salt), _ptr(a), _ptr(b),
                len(a), _ptr(band_mult), bands, rows, int(band_tag), _ptr(sigs), _ptr(keys),
                _ptr(counts)) != 0:
            failed.append(lo)

    _over_ranges(n, work)
    if failed:
        raise MemoryError("MinHash kernel: out of memory for a text's scratch buffers")
    return sigs, keys, counts


def pair_jaccard(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Twin of ``minhash._nb_pair_jaccard``: the fraction of equal slots of each pair."""
    lib = _lib()
    sig = np.ascontiguousarray(signatures, np.uint32)
    pairs = np.ascontiguousarray(pairs, np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), np.float64)
    _over_ranges(len(pairs), lambda lo, hi: lib.dd_pair_jaccard(
        _ptr(sig), sig.shape[1], _ptr(pairs), lo, hi, _ptr(out)))
    return out


def bucket_pairs(keys: np.ndarray, rows_idx: np.ndarray, all_pairs: bool, max_bucket: int,
                 n_total: int) -> np.ndarray:
    """Twin of ``minhash._nb_bucket_pairs``: distinct pair codes ``i * n_total + j``."""
    lib = _lib()
    keys = np.ascontiguousarray(keys, np.uint64)
    rows_idx = np.ascontiguousarray(rows_idx, np.int64)
    out = ctypes.POINTER(ctypes.c_int64)()
    m = lib.dd_bucket_pairs(_ptr(keys), keys.shape[1], _ptr(rows_idx), len(rows_idx),
                            int(all_pairs), max_bucket, n_total, ctypes.byref(out))
    if m < 0:
        raise MemoryError("LSH bucket kernel: out of memory")
    try:
        return np.ctypeslib.as_array(out, shape=(m,)).copy() if m else np.empty(0, np.int64)
    finally:
        lib.dd_free(ctypes.cast(out, ctypes.c_void_p))
