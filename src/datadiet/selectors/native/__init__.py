"""The hashing kernels as a small C library, loaded with ctypes: no compiler at run time, no
LLVM in the process, every core through plain threads.

These are the production hashing kernels (exact-dedup normalisation, the MinHash shard, LSH
buckets, pair agreement, the fused MinHash reduce). ``datadiet curate`` on a file is a short
process: the library (``hashkernels.c``) loads in a millisecond (a JIT such as numba would first
cost about 0.5 CPU-seconds and 130 MiB of LLVM), and ctypes releases the GIL during each call,
so a batch split into document ranges runs on all cores from a thread pool.

The library is built once, at install time: ``make install`` runs ``python -m
datadiet.selectors.native build`` (any C compiler will do). A plain ``pip install datadiet``
does not compile it (setuptools ships ``hashkernels.c`` as package data); run that command once
after it. Without the library — not built, no compiler, ``DATADIET_NATIVE=0`` — the callers run
the NumPy fallback (see :mod:`datadiet.selectors.hashing`); both give the bits of the Python
reference, and ``tests/selectors/test_native_kernels.py`` holds them to that.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from datadiet.pipeline.atomic import atomic_path
from datadiet.selectors.unicode_tables import build_character_tables

__all__ = ["LIBRARY", "available", "bucket_pairs", "build", "docs_with", "minhash_cluster",
           "minhash_shard", "normalize", "pair_jaccard", "signatures", "threads"]

SOURCE = Path(__file__).with_name("hashkernels.c")
LIBRARY = Path(__file__).with_name("_hashkernels.so")
#: Per-code-point tables built with the library from this Python's ``unicodedata`` and ``re``:
#: the NFKC classes of the normalisation kernel (see :func:`build_unicode_tables`) and the
#: character tables of :mod:`datadiet.selectors.hashing`, which every process would otherwise
#: rebuild (~0.1 s of a short run).
UNICODE_TABLES = Path(__file__).with_name("_unicode_tables.npz")
#: Bumped whenever a table's definition changes, so a file built by older code is not used.
TABLES_FORMAT = 1
ABI_VERSION = 4
#: Most documents per piece of work handed to a thread; a batch is cut into at least four
#: pieces per thread (of at least ``MIN_PIECE``), so threads finish together on skewed lengths
#: while a call's overhead (microseconds) stays noise.
PIECE = 2048
MIN_PIECE = 64

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "dd_normalize": (None, [_P, _P, _I, _I, _P, _P, _I, _P, _P, _P, _P, _P, _P, _I, _P, _P]),
    "dd_docs_with": (None, [_P, _P, _I, _I, _P, _I, ctypes.c_int, _P]),
    "dd_minhash_shard": (ctypes.c_int, [_P, _P, _I, _I, _P, _P, _I, _P, _P, _I, _P,
                                        ctypes.c_uint64, _P, _P, _I, _P, _I, _I,
                                        ctypes.c_uint64, _P, _P, _P]),
    "dd_signatures": (None, [_P, _P, _I, _I, _P, _P, _I, _P]),
    "dd_pair_jaccard": (None, [_P, _I, _P, _I, _I, _P]),
    "dd_bucket_pairs": (_I, [_P, _I, _P, _I, ctypes.c_int, _I, _I,
                             ctypes.POINTER(ctypes.POINTER(ctypes.c_int64))]),
    "dd_minhash_cluster": (ctypes.c_int, [_P, _I, _P, _I, _P, _I, ctypes.c_int, ctypes.c_double,
                                          _I, _I, _P, _P]),
    "dd_free": (None, [_P]),
    "dd_abi_version": (ctypes.c_int, []),
}


def build(compiler: str | None = None, quiet: bool = False) -> Path:
    """Compile ``hashkernels.c`` into ``_hashkernels.so`` next to it, through the atomic writer (a
    reader never sees half a library), and build the Unicode tables beside it. Raises
    ``RuntimeError`` naming the compiler's complaint."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH; the NumPy fallback runs instead")
    with atomic_path(LIBRARY) as tmp:
        done = subprocess.run([cc, "-O3", "-fPIC", "-shared", "-o", str(tmp), str(SOURCE)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}:\n{done.stderr.strip()}")
    _library.cache_clear()
    build_unicode_tables()
    if not quiet:
        print(f"built {LIBRARY} and {UNICODE_TABLES.name}", file=sys.stderr)
    return LIBRARY


def _composition_seconds() -> set[int]:
    """Code points that may combine with the character before them in NFC/NFKC composition:
    the second of every two-character canonical decomposition, and Hangul's vowel and
    trailing jamo (composed by rule). A superset is safe: such characters go to Python."""
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for cp in range(0x110000):
        decomposition = unicodedata.decomposition(chr(cp))
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2:
                seconds.add(int(parts[1], 16))
    return seconds


def _nfkc_classes() -> dict[str, np.ndarray]:
    """Classify every code point for NFKC in the kernel.

    Class 0: the character is its own NFKC in any context — canonical combining class 0,
    ``NFKC(c) == c``, and never the second half of a composition (its NFKC quick-check is Yes,
    so a text of such characters is NFKC already, UAX #15). Class 1: ``NFKC(c)`` differs but
    consists of class-0 characters only (no-break space, ellipsis, superscripts, fractions,
    ligatures, full-width forms): the kernel writes that expansion, which equals NFKC of the
    whole text because NFKD of a text is the concatenation of its characters' NFKD. Class 2:
    anything else (combining marks, composing jamo, expansions with combining marks): the text
    goes to Python's ``unicodedata``.
    """
    seconds = _composition_seconds()
    classes = np.zeros(0x110000, np.uint8)
    expansions: dict[int, str] = {}
    for cp in range(0x80, 0x110000):
        char = chr(cp)
        if 0xD800 <= cp < 0xE000:  # lone surrogates: their own NFKC, never composed
            continue
        nfkc = unicodedata.normalize("NFKC", char)
        stable = unicodedata.combining(char) == 0 and cp not in seconds
        if nfkc == char and stable:
            continue
        if stable and all(unicodedata.combining(c) == 0 and ord(c) not in seconds
                          and unicodedata.normalize("NFKC", c) == c for c in nfkc):
            classes[cp] = 1
            expansions[cp] = nfkc
        else:
            classes[cp] = 2
    keys = np.array(sorted(expansions), np.uint32)
    lengths = np.array([len(expansions[k]) for k in keys.tolist()], np.int64)
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cps = np.array([ord(c) for k in keys.tolist() for c in expansions[k]], np.uint32)
    return {"nfkc_classes": classes, "nfkc_keys": keys, "nfkc_offsets": offsets,
            "nfkc_cps": cps}


def build_unicode_tables(path: Path = UNICODE_TABLES) -> Path:
    """Build the per-code-point tables and save them atomically (a few seconds, once, at
    install). The file records the Unicode version; a Python with another one ignores it."""
    tables = _nfkc_classes()
    tables.update(build_character_tables())
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, unicode=np.array(unicodedata.unidata_version),
                            format=np.array(TABLES_FORMAT), **tables)
    unicode_tables.cache_clear()
    nfkc_tables.cache_clear()
    return path


@functools.cache
def unicode_tables() -> dict[str, np.ndarray] | None:
    """Every table of :func:`build_unicode_tables`, or None when the file is missing,
    unreadable, of an older format, or from another Unicode version than this Python's."""
    if os.environ.get("DATADIET_NATIVE", "") == "0":
        return None
    try:
        with np.load(UNICODE_TABLES) as data:
            if (str(data["unicode"]) != unicodedata.unidata_version
                    or int(data["format"]) != TABLES_FORMAT):
                return None
            return {name: data[name] for name in data.files if name not in ("unicode", "format")}
    except (OSError, KeyError, ValueError):
        return None


def unicode_table(name: str) -> np.ndarray | None:
    """One saved table by name (``word``, ``space``, ``lower``, ``casefold``), or None."""
    tables = unicode_tables()
    return None if tables is None else tables.get(name)


@functools.cache
def nfkc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(classes, keys, offsets, cps)`` of the kernel's NFKC, or None (see
    :func:`unicode_tables`)."""
    tables = unicode_tables()
    if tables is None:
        return None
    return (tables["nfkc_classes"], tables["nfkc_keys"], tables["nfkc_offsets"],
            tables["nfkc_cps"])


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
    size = min(PIECE, max(MIN_PIECE, -(-n // (4 * workers))))
    pieces = [(lo, min(n, lo + size)) for lo in range(0, n, size)]
    if workers == 1 or len(pieces) < 2:
        for lo, hi in pieces:
            work(lo, hi)
        return
    for future in [_pool(workers).submit(work, lo, hi) for lo, hi in pieces]:
        future.result()


def _contiguous(*pairs: tuple[np.ndarray, type]) -> list[np.ndarray]:
    """Each array as a C-contiguous array of its dtype (a view when it already is one): what a
    pointer handed to C must be."""
    return [np.ascontiguousarray(array, dtype) for array, dtype in pairs]


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("the C kernels are not built: run `python -m datadiet.selectors.native build`")
    return lib


def normalize(buf: np.ndarray, starts: np.ndarray, mode: np.ndarray, fold: np.ndarray,
              word: np.ndarray, ascii_word: np.ndarray, with_nfkc: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """``normalize()`` of a batch in C: the normalised bytes (in each text's own span) and
    lengths (-1 where Python must normalise). ``with_nfkc``: the kernel also does NFKC, by
    :func:`nfkc_tables` (which must exist), for the texts in mode 0."""
    lib = _lib()
    buf, starts, mode, fold, word, ascii_word = _contiguous(
        (buf, np.uint8), (starts, np.int64), (mode, np.uint8), (fold, np.uint32),
        (word, np.bool_), (ascii_word, np.uint8))
    n = len(starts) - 1
    out = np.empty(len(buf), np.uint8)
    lengths = np.empty(n, np.int64)
    tables = nfkc_tables() if with_nfkc else None
    if with_nfkc and tables is None:
        raise RuntimeError(f"{UNICODE_TABLES} is missing or from another Unicode version")
    classes, keys, offsets, cps = tables if tables is not None else (None, None, None, None)
    nfkc = ((_ptr(classes), _ptr(keys), _ptr(offsets), _ptr(cps), len(keys))
            if tables is not None else (None, None, None, None, 0))
    args = (_ptr(mode), _ptr(fold), len(fold), _ptr(word), _ptr(ascii_word), *nfkc, _ptr(out),
            _ptr(lengths))
    _over_ranges(n, lambda lo, hi: lib.dd_normalize(_ptr(buf), _ptr(starts), lo, hi, *args))
    return out, lengths


def docs_with(buf: np.ndarray, offsets: np.ndarray, needles: np.ndarray,
              any_non_ascii: bool) -> np.ndarray:
    """Which texts hold a non-ASCII byte or a needle."""
    lib = _lib()
    buf, offsets, needles = _contiguous((buf, np.uint8), (offsets, np.int64), (needles, np.uint8))
    needles = needles.reshape(-1, 2)
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
    """Signatures, band keys and shingle counts of a batch (``minhash_shard_reference``)."""
    lib = _lib()
    buf, offsets, word, lower, ascii_word, mult, pos, a, b, band_mult = _contiguous(
        (buf, np.uint8), (offsets, np.int64), (word, np.bool_), (lower, np.uint32),
        (ascii_word, np.uint8), (mult, np.uint64), (pos, np.uint64), (a, np.uint32),
        (b, np.uint32), (band_mult, np.uint64))
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


def signatures(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray
               ) -> np.ndarray:
    """MinHash signatures ``(n, len(a)) uint32`` of flat shingle hashes (``signatures_reference``)."""
    lib = _lib()
    hashes, offsets, a, b = _contiguous((hashes, np.uint32), (offsets, np.int64), (a, np.uint32),
                                        (b, np.uint32))
    n = len(offsets) - 1
    sigs = np.full((n, len(a)), np.uint32(0xFFFFFFFF), np.uint32)
    _over_ranges(n, lambda lo, hi: lib.dd_signatures(
        _ptr(hashes), _ptr(offsets), lo, hi, _ptr(a), _ptr(b), len(a), _ptr(sigs)))
    return sigs


def pair_jaccard(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The fraction of equal slots of each pair."""
    lib = _lib()
    sig = np.ascontiguousarray(signatures, np.uint32)
    pairs = np.ascontiguousarray(pairs, np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), np.float64)
    _over_ranges(len(pairs), lambda lo, hi: lib.dd_pair_jaccard(
        _ptr(sig), sig.shape[1], _ptr(pairs), lo, hi, _ptr(out)))
    return out


#: Rows one LSH grouping takes: the kernel's bucket table holds row positions as int32.
MAX_GROUPED_ROWS = 1 << 30


def _grouped_rows(rows_idx: np.ndarray) -> np.ndarray:
    if len(rows_idx) >= MAX_GROUPED_ROWS:
        raise ValueError(f"{len(rows_idx):,} rows in one MinHash reduce: the in-process kernel "
                         f"takes fewer than {MAX_GROUPED_ROWS:,}; run it on Dask "
                         "(--executor dask), whose bucket owners each take a share")
    return np.ascontiguousarray(rows_idx, np.int64)


def bucket_pairs(keys: np.ndarray, rows_idx: np.ndarray, all_pairs: bool, max_bucket: int,
                 n_total: int) -> np.ndarray:
    """``candidate_pairs_reference`` as distinct pair codes ``i * n_total + j``."""
    lib = _lib()
    keys = np.ascontiguousarray(keys, np.uint64)
    rows_idx = _grouped_rows(rows_idx)
    out = ctypes.POINTER(ctypes.c_int64)()
    m = lib.dd_bucket_pairs(_ptr(keys), keys.shape[1], _ptr(rows_idx), len(rows_idx),
                            int(all_pairs), max_bucket, n_total, ctypes.byref(out))
    if m < 0:
        raise MemoryError("LSH bucket kernel: out of memory")
    try:
        return np.ctypeslib.as_array(out, shape=(m,)).copy() if m else np.empty(0, np.int64)
    finally:
        lib.dd_free(ctypes.cast(out, ctypes.c_void_p))


def minhash_cluster(band_keys: np.ndarray, rows_idx: np.ndarray, signatures: np.ndarray,
                    threshold: float, verify: bool, max_bucket: int = 256
                    ) -> tuple[np.ndarray, int, int]:
    """The MinHash reduce fused: LSH buckets -> distinct candidate pairs -> (verified) ->
    union-find, with no array of pairs. Returns each row's cluster label (its smallest row),
    the distinct candidate pairs and the pairs merged — what ``minhash_clusters`` computes
    from :func:`bucket_pairs`, ``estimated_jaccard`` and ``connected_components``."""
    lib = _lib()
    keys = np.ascontiguousarray(band_keys, np.uint64)
    rows_idx = _grouped_rows(rows_idx)
    sig = np.ascontiguousarray(signatures, np.uint32)
    n_total = keys.shape[0]
    labels = np.arange(n_total, dtype=np.int64)
    counts = np.zeros(2, np.int64)
    if lib.dd_minhash_cluster(_ptr(keys), keys.shape[1], _ptr(rows_idx), len(rows_idx), _ptr(sig),
                              sig.shape[1], int(verify), float(threshold), max_bucket, n_total,
                              _ptr(labels), _ptr(counts)) != 0:
        raise MemoryError("MinHash cluster kernel: out of memory")
    return labels, int(counts[0]), int(counts[1])
