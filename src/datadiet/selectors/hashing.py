"""What the hashing selectors share: the one 64-bit mixer, the compiler switch, the byte layout of
a batch of texts, and the per-code-point Unicode tables the compiled kernels look characters up in.

Why one module: exact dedup, MinHash, DSIR and the quality features all hash words and texts.
Two copies of a mixer drift apart; two definitions of "a word character" make two selectors
disagree on what a word is. Here each exists once.

Why compiled kernels work on UTF-8 bytes: a batch of texts becomes one ``uint8`` array and an
offsets array (:func:`utf8_layout`), so a kernel walks documents in parallel (``prange``) without
a Python object per word or per character. What Python's ``str`` methods define (``\\w``,
``str.isspace``, ``str.lower``, ``str.casefold``) becomes a lookup table indexed by code point,
built from those same methods, so the kernels agree with the Python definitions by construction
(and the tests compare them over every code point).

Three implementations of the hot kernels give the same bits: C (``selectors/native``: exact
normalisation, MinHash shard signatures, the MinHash reduce; a small library built at install
and called through ctypes, so it costs no start-up and runs on every core from plain threads),
numba (these modules; every kernel, the quality features and DSIR included), and NumPy/Python.
The C kernels are used wherever they exist and are built.

numba is optional: :func:`numba_enabled` is False without it, with ``DATADIET_NUMBA=0``, or for
a small call in a process that has not loaded numba yet, and every caller has a NumPy/Python
path that gives the same result. Kernels are compiled once and
cached on disk (``cache=True``: the first batch of a run does not pay for compilation); parallel
kernels use all the process's numba threads (``NUMBA_NUM_THREADS``; set it to 1 in a worker that
already runs one process per core).

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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datadiet.selectors import native
from datadiet.selectors.unicode_tables import (
    CASEFOLD_NEEDS_PYTHON,
    build_casefold_table,
    build_lower_table,
    regex_char_table,
)

#: Whether numba is installed, found without importing it (finding a module is cheap).
NUMBA_INSTALLED = importlib.util.find_spec("numba") is not None


class _Prange:
    """``prange`` in a kernel module before numba is loaded: the loader rebinds the module's
    ``prange`` to ``numba.prange`` before any kernel compiles. Called as Python code it is
    ``range``, so a kernel run without numba loops the same way."""

    def __call__(self, *args: int) -> range:
        return range(*args)


prange: Any = _Prange()

__all__ = [
    "CASEFOLD_NEEDS_PYTHON",
    "KERNEL_BATCH",
    "Texts",
    "as_str_list",
    "non_ascii_texts",
    "text_getter",
    "texts_containing",
    "fmix64",
    "is_word_char",
    "jit",
    "numba_enabled",
    "prange",
    "regex_char_table",
    "utf8_layout",
    "word_char_table",
    "space_table",
    "casefold_table",
    "lower_table",
]

U64 = np.uint64
FMIX_MULT_1 = 0xFF51AFD7ED558CCD
FMIX_MULT_2 = 0xC4CEB9FE1A85EC53


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


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: every input bit flips about half the output.

    The one mixer of the package: word, n-gram and token hashes all end with it.
    """
    x ^= x >> U64(33)
    x *= U64(FMIX_MULT_1)
    x ^= x >> U64(33)
    x *= U64(FMIX_MULT_2)
    x ^= x >> U64(33)
    return x


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


@jit()
def nb_encode(out, o, cp):  # noqa: ANN001, ANN202 - numba-typed
    """Write code point ``cp`` as UTF-8 at ``out[o]``; returns the index after it."""
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


#: A batch of texts as the per-shard functions take it: Python strings, or an Arrow string
#: column (read without a Python object per row).
Texts = Sequence[str] | pa.Array | pa.ChunkedArray

#: Texts per call of a parallel kernel in the steps: enough to amortise the threads' fork and
#: join (milliseconds on a busy machine), small enough to bound a batch's memory.
KERNEL_BATCH = 8192


def utf8_layout(texts: Texts) -> tuple[np.ndarray, np.ndarray]:
    """A batch as one UTF-8 byte array and ``len(texts) + 1`` offsets: text ``i`` is
    ``buf[offsets[i]:offsets[i + 1]]``.

    An Arrow string column already is this layout: its bytes are used in place (no copy, no
    Python string); nulls count as empty texts. Python strings are encoded with lone
    surrogates kept (``surrogatepass``) so that no text is ever refused; surrogates are neither
    word nor space characters, so every kernel treats them as punctuation.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if isinstance(texts, pa.Array):
        return _arrow_utf8(texts)
    parts = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)), out=offsets[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offsets


def _arrow_utf8(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    if len(arr) == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    _, offsets_buf, data_buf = arr.buffers()
    width = np.int32 if pa.types.is_string(arr.type) else np.int64
    offsets = np.frombuffer(offsets_buf, width)[arr.offset : arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    # Only this slice's bytes: a batch of a memory-mapped column shares the whole column's buffer.
    data = np.frombuffer(data_buf, np.uint8)[lo:hi] if data_buf is not None and hi > lo else (
        np.zeros(0, np.uint8))
    return data, offsets - lo


def text_getter(texts: Texts, buf: np.ndarray, offsets: np.ndarray) -> Callable[[int], str]:
    """``get(i)``: text ``i`` as a Python string, decoded from the layout only when asked (the
    few texts a kernel hands back to Python)."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts.__getitem__
    return lambda i: bytes(buf[offsets[i] : offsets[i + 1]]).decode("utf-8", "surrogatepass")


def as_str_list(texts: Texts) -> list[str]:
    """The batch as Python strings (nulls as empty texts), for the paths without numba."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return [t or "" for t in texts.to_pylist()]
    return [t or "" for t in texts]


@jit(parallel=True)
def _nb_docs_with(buf, offsets, needles, any_non_ascii):  # noqa: ANN001, ANN202
    n = offsets.size - 1
    found = np.zeros(n, np.bool_)
    for d in prange(n):
        for i in range(offsets[d], offsets[d + 1]):
            if buf[i] < 0x80:
                continue
            if any_non_ascii:
                found[d] = True
                break
            for k in range(needles.shape[0]):
                if buf[i] == needles[k, 0] and i + 1 < offsets[d + 1] and buf[i + 1] == needles[k, 1]:
                    found[d] = True
            if found[d]:
                break
    return found


def non_ascii_texts(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Indices of the texts of a UTF-8 layout with a byte above 0x7F."""
    if native.available():
        return np.flatnonzero(native.docs_with(buf, offsets, np.zeros((0, 2), np.uint8), True))
    if not numba_enabled(len(offsets) - 1):
        return np.array([i for i in range(len(offsets) - 1)
                         if (buf[offsets[i] : offsets[i + 1]] >= 0x80).any()], np.int64)
    return np.flatnonzero(_nb_docs_with(buf, offsets, np.zeros((0, 2), np.uint8), True))


def texts_containing(buf: np.ndarray, offsets: np.ndarray, chars: str) -> np.ndarray:
    """Indices of the texts of a UTF-8 layout containing any of ``chars`` (each a two-byte
    UTF-8 character, U+0080..U+07FF): the rare texts a kernel leaves to Python."""
    needles = np.array([list(c.encode("utf-8")) for c in chars], np.uint8).reshape(-1, 2)
    if native.available():
        return np.flatnonzero(native.docs_with(buf, offsets, needles, False))
    if not numba_enabled(len(offsets) - 1):
        raw = [bytes(buf[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
        wanted = [c.encode("utf-8") for c in chars]
        return np.array([i for i, r in enumerate(raw) if any(w in r for w in wanted)], np.int64)
    return np.flatnonzero(_nb_docs_with(buf, offsets, needles, False))


@functools.cache
def word_char_table() -> np.ndarray:
    """``table[cp]`` is True where ``chr(cp)`` matches Python's ``re`` ``\\w`` (letters, digits
    and ``_`` of every script: ``str.isalnum() or '_'``)."""
    saved = native.unicode_table("word")
    return saved if saved is not None else regex_char_table(r"\w")


@functools.cache
def _word_chars_below(size: int) -> np.ndarray:
    return regex_char_table(r"\w", size)


def is_word_char(cp: np.ndarray) -> np.ndarray:
    """``word_char_table()[cp]`` for an array of code points, without building the whole table
    when it does not exist yet: only as far as the largest code point (rounded up to a power of
    two). Why: the uncompiled paths run on small inputs, where the 1.1-million-entry table
    would be a tenth of the run; Latin text needs its first few hundred entries."""
    if cp.size == 0:
        return np.zeros(0, bool)
    if word_char_table.cache_info().currsize:
        return word_char_table()[cp]
    return _word_chars_below(min(0x110000, 1 << int(cp.max()).bit_length()))[cp]


@functools.cache
def space_table() -> np.ndarray:
    """``table[cp]`` is True where ``chr(cp)`` matches ``re``'s ``\\s``, which is
    ``str.isspace``: what ``str.split()``/``strip()`` treat as white space."""
    saved = native.unicode_table("space")
    return saved if saved is not None else regex_char_table(r"\s")


@functools.cache
def lower_table() -> np.ndarray:
    """``table[cp]`` = ``ord(chr(cp).lower())`` for code points below ``CASE_TABLE_SIZE``.

    Identity where ``lower`` yields two code points (only U+0130) or depends on context (final
    sigma): texts with those go through ``str.lower`` before a kernel sees them.
    """
    saved = native.unicode_table("lower")
    return saved if saved is not None else build_lower_table()


@functools.cache
def casefold_table() -> np.ndarray:
    """``table[cp]`` = ``ord(chr(cp).casefold())`` below ``CASE_TABLE_SIZE``, or
    ``CASEFOLD_NEEDS_PYTHON`` where the fold is several code points (``ß`` -> ``ss``) or needs
    more UTF-8 bytes than the original (``Ⱥ`` -> ``ⱥ``), which an in-place kernel cannot write.

    ``str.casefold`` has no context rules, so folding code point by code point is exact.
    """
    saved = native.unicode_table("casefold")
    return saved if saved is not None else build_casefold_table()
