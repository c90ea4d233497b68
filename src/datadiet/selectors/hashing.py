"""What the hashing selectors share: the one 64-bit mixer, the byte layout of a batch of texts,
and the per-code-point Unicode tables the compiled kernels look characters up in.

Why one module: exact dedup, MinHash, DSIR and the quality features all hash words and texts.
Two copies of a mixer drift apart; two definitions of "a word character" make two selectors
disagree on what a word is. Here each exists once.

Why compiled kernels work on UTF-8 bytes: a batch of texts becomes one ``uint8`` array and an
offsets array (:func:`utf8_layout`), so a kernel walks documents in parallel without a Python
object per word or per character. What Python's ``str`` methods define (``\\w``,
``str.isspace``, ``str.lower``, ``str.casefold``) becomes a lookup table indexed by code point,
built from those same methods, so the kernels agree with the Python definitions by construction
(and the tests compare them over every code point).

One production implementation of each hashing kernel, one reference, one fallback:

* **Production: C** (:mod:`datadiet.selectors.native`): exact-dedup normalisation, the MinHash
  shard (shingles -> signature -> band keys), pair agreement, LSH buckets and the fused MinHash
  reduce. A small library loaded through ctypes: no start-up cost, every core from plain threads.
* **Fallback: NumPy** (the array programs in :mod:`~datadiet.selectors.minhash`, and
  :func:`datadiet.pipeline.text.normalize` per text in :mod:`~datadiet.selectors.exact`). It runs
  where the library is not built: ``pip install datadiet`` ships ``hashkernels.c`` as package data
  but setuptools does not compile it (``make install`` or ``python -m datadiet.selectors.native
  build`` does), a machine without a C compiler cannot build it, and ``DATADIET_NATIVE=0`` turns
  it off. NumPy is a core dependency, so the fallback needs nothing extra installed; it costs an
  order of magnitude more CPU time than C, and gives the same bits.
* **Reference: Python** (:func:`~datadiet.selectors.minhash.minhash_shard_reference` and its
  helpers, built on :func:`datadiet.pipeline.text.words`; :func:`datadiet.pipeline.text.normalize`
  for exact dedup): the obviously-correct definition the tests hold C and NumPy to, bit for bit
  (``tests/selectors/test_native_kernels.py``). Never on the hot path.

numba is not used for hashing (it was a third twin, kept bit-equal at a cost); the quality
features still compile with it, through :mod:`datadiet.selectors.jit`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

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

__all__ = [
    "CASEFOLD_NEEDS_PYTHON",
    "FMIX_MULT_1",
    "FMIX_MULT_2",
    "KERNEL_BATCH",
    "Texts",
    "as_str_list",
    "casefold_table",
    "fmix64",
    "is_word_char",
    "lower_table",
    "non_ascii_texts",
    "regex_char_table",
    "space_table",
    "text_getter",
    "texts_containing",
    "utf8_layout",
    "word_char_table",
]

U64 = np.uint64
FMIX_MULT_1 = 0xFF51AFD7ED558CCD
FMIX_MULT_2 = 0xC4CEB9FE1A85EC53


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
    """The batch as Python strings (nulls as empty texts), for the paths without C."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return [t or "" for t in texts.to_pylist()]
    return [t or "" for t in texts]


def non_ascii_texts(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Indices of the texts of a UTF-8 layout with a byte above 0x7F."""
    if native.available():
        return np.flatnonzero(native.docs_with(buf, offsets, np.zeros((0, 2), np.uint8), True))
    n = len(offsets) - 1
    if n == 0 or len(buf) == 0:
        return np.zeros(0, np.int64)
    high = np.concatenate([[0], np.cumsum(buf >= 0x80, dtype=np.int64)])
    return np.flatnonzero(high[offsets[1:]] > high[offsets[:-1]])


def texts_containing(buf: np.ndarray, offsets: np.ndarray, chars: str) -> np.ndarray:
    """Indices of the texts of a UTF-8 layout containing any of ``chars`` (each a two-byte
    UTF-8 character, U+0080..U+07FF): the rare texts a kernel leaves to Python."""
    needles = np.array([list(c.encode("utf-8")) for c in chars], np.uint8).reshape(-1, 2)
    if native.available():
        return np.flatnonzero(native.docs_with(buf, offsets, needles, False))
    wanted = [c.encode("utf-8") for c in chars]
    found = [i for i in non_ascii_texts(buf, offsets).tolist()
             if any(w in bytes(buf[offsets[i] : offsets[i + 1]]) for w in wanted)]
    return np.array(found, np.int64)


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
    two). Why: the NumPy fallback may run on small inputs, where the 1.1-million-entry table
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
