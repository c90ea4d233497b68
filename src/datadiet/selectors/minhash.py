"""Near-duplicate removal with MinHash + LSH: C kernels, NumPy array programs where the C library
is not built, and a Python reference the tests hold both to.

Why near-dedup at all: web-scale corpora repeat the same page with a changed date, a
boilerplate footer, a truncated tail. Training on those copies spends tokens on text the model
has already seen (Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better").
Exact hashing misses them; MinHash (Broder 1997) estimates the Jaccard similarity of two
documents' word n-gram sets from a short signature, and LSH banding finds the pairs that are
likely above a threshold without comparing all pairs.

Why this shape: every piece is a pure function of arrays so the same code runs on one machine
or as a Dask map over shards (see DESIGN.md, "Past one machine"):

* :func:`shingle_hashes` — texts -> one flat ``uint32`` array of shingle hashes + offsets.
  Per shard.
* :func:`signatures_from_hashes` / :func:`minhash_signatures` — -> ``(n, num_perm) uint32``
  signatures. Per shard; deterministic in the parameters, so shards agree.
* :func:`band_keys` — signatures -> ``(n, bands) uint64`` LSH bucket keys. Per shard.
* :func:`candidate_pairs_from_keys` / :func:`lsh_candidate_pairs` — keys -> candidate pairs,
  grouped with a NumPy sort, not a dict of lists. Global, but only ``bands`` numbers per row.
* :func:`estimated_jaccard` — optional check of candidates against the threshold.
* :func:`connected_components` — vectorised union-find; the label of a row is the smallest row
  index of its cluster, which is the row we keep.

Speed comes from never looping in Python per shingle or per permutation:

* Tokenising is a batch-level twin of :func:`datadiet.pipeline.text.words` — the same
  definition of a word (maximal runs of Python's ``\\w`` in ``text.lower()``), proven equal to
  it by property tests against :func:`shingle_hashes_reference`, which is built on ``words()``.
  A batch becomes one flat array (code points for NumPy, UTF-8 bytes for the C kernel);
  word characters come from a lookup table of ``\\w``. A word's hash is a random multilinear
  hash of its code points; an n-gram's hash mixes its ``n`` word hashes with per-position
  multipliers. No shingle string is ever built.
* The permutations are the universal affine family ``pi_k(x) = a_k * x + b_k mod 2**32`` (odd
  ``a_k``), applied to well-mixed 32-bit shingle hashes. Each ``pi_k`` is a bijection, so with
  random shingle hashes every slot is an unbiased min-wise sample (the tests check bias and
  error against MinHash theory); working modulo ``2**32`` instead of a Mersenne prime keeps
  every operation a single SIMD lane with no division (datasketch's ``affine32`` scheme makes
  the same choice). In NumPy, a block of shingles times all permutations is one broadcast
  ``(num_perm, block)`` multiply-add and per-document minima one ``np.minimum.reduceat``; the
  C kernel is the same loop fused, vectorised by the compiler over the permutations.

Which implementation runs: the C kernels (:mod:`datadiet.selectors.native`) wherever the library
is built; the NumPy programs below where it is not (a plain ``pip install``, no C compiler,
``DATADIET_NATIVE=0``); see :mod:`datadiet.selectors.hashing` for why that is the one fallback.
:func:`minhash_shard_reference` and its helpers are the reference of both, for the tests.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import NearDuplicates, Step, StepContext, register_step
from datadiet.pipeline.text import words
from datadiet.selectors import native
from datadiet.selectors.common import row_ids
from datadiet.selectors.hashing import (
    KERNEL_BATCH,
    Texts,
    as_str_list,
    fmix64,
    is_word_char,
    lower_table,
    text_getter,
    texts_containing,
    utf8_layout,
    word_char_table,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "MinHashClusters",
    "MinHashDedup",
    "MinHashShard",
    "band_keys",
    "candidate_pairs_from_keys",
    "connected_components",
    "estimated_jaccard",
    "lsh_candidate_pairs",
    "minhash_clusters",
    "minhash_shard",
    "minhash_signatures",
    "optimal_bands_rows",
    "shingle_hashes",
    "band_keys_reference",
    "candidate_pairs_reference",
    "minhash_clusters_reference",
    "minhash_shard_reference",
    "shingle_hashes_reference",
    "signatures_from_hashes",
    "signatures_reference",
]

_U64 = np.uint64
_MAX32 = np.uint32(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1
# Word hash: sum_j code_point[j] * _CHAR_MULT[j % 64] (+ length tag), then a 64-bit mixer.
# Independent random multipliers per position, rather than powers of one base, keep the per
# character work free of a loop-carried multiply: the compiled tokeniser is branch-free and
# throughput-bound instead of latency-bound.
_CHAR_MULT = np.random.default_rng(0x5EED_0F_3E11).integers(0, 1 << 63, 64, dtype=np.uint64) * 2 + 1
# Added times the word length, so that words of different lengths hash apart.
_LEN_TAG = 0x94D049BB133111EB
# Added times the band index to a band key (keys of different bands never need to meet, but
# distinct keys make a shared table or a debug dump unambiguous).
_BAND_TAG = 0xD6E8FEB86659FD93
# How many shingles one block of the signature kernel handles: the (num_perm, block) uint32
# working buffer (128 x 2048 x 4 B = 1 MiB) then stays in a core's L2 cache.
_BLOCK = 2048
# Signatures and band keys of a corpus bigger than this go to memory-mapped files.
IN_MEMORY_BYTES = 256 << 20
#: Buckets up to this many members give all their pairs (when verified); bigger ones a star.
MAX_BUCKET = 256


# ----------------------------------------------------------------------------------------------
# hashing helpers
# ----------------------------------------------------------------------------------------------


@functools.cache
def _ascii_word_table() -> np.ndarray:
    """For each ASCII byte: its lower-cased value if it is a word character, else 0."""
    table = np.zeros(128, np.uint8)
    for b in range(128):
        low = chr(b).lower()
        if word_char_table()[ord(low)]:
            table[b] = ord(low)
    return table


# All random constants derive from ``seed`` (one independent stream per use), so two shards or
# two runs with the same parameters produce identical hashes, signatures and band keys — the
# property that makes map-over-shards correct.


@functools.cache
def _perm_constants(seed: int, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of the ``num_perm`` affine permutations; every ``a`` is odd (a bijection)."""
    rng = np.random.default_rng([seed, 1])
    a = (rng.integers(0, 1 << 32, num_perm, dtype=np.uint64) | 1).astype(np.uint32)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


@functools.cache
def _shingle_constants(seed: int, ngram: int) -> tuple[np.ndarray, np.uint64]:
    """Odd per-position multipliers of an n-gram's word hashes, and a salt."""
    rng = np.random.default_rng([seed, 2])
    pos = rng.integers(0, 1 << 63, ngram, dtype=np.uint64) * _U64(2) + _U64(1)
    return pos, rng.integers(0, 1 << 63, 1, dtype=np.uint64)[0]


@functools.cache
def _band_constants(seed: int, bands: int, rows: int) -> np.ndarray:
    """Odd ``(bands, rows)`` multipliers of the linear band-key hash."""
    rng = np.random.default_rng([seed, 3, bands, rows])
    return rng.integers(0, 1 << 63, (bands, rows), dtype=np.uint64) * _U64(2) + _U64(1)


# ``str.lower`` has exactly two rules no per-code-point table can express: U+0130 lower-cases to
# two code points and capital sigma depends on its context (final sigma). Texts containing them
# go through ``str.lower`` before the kernel (which lower-cases everything else by a table).
_LOWER_IN_PYTHON = "\u0130\u03a3"


def _codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lower-case a batch and lay it out as one ``uint32`` code-point array plus text offsets.

    ``str.lower`` runs per text in C (it is Unicode-exact, which a table could not be: some
    characters lower-case to two); everything after works on the flat array.
    """
    lowered = [t.lower() for t in texts]
    doc_start = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, lowered), np.int64, len(lowered)), out=doc_start[1:])
    cp = np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return cp, doc_start


def _word_hashes_numpy(cp: np.ndarray, doc_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word of a code-point batch; returns (uint64 word hashes, words per text).

    A word is exactly what :func:`datadiet.pipeline.text.words` returns: a maximal run of ``\\w``
    characters of ``text.lower()``. Word boundaries never cross texts.
    """
    n = len(doc_start) - 1
    total = cp.size
    if total == 0:
        return np.empty(0, _U64), np.zeros(n, np.int64)
    nonempty = np.diff(doc_start) > 0
    is_word = is_word_char(cp)
    prev = np.empty(total, bool)
    prev[0] = False
    prev[1:] = is_word[:-1]
    prev[doc_start[:-1][nonempty]] = False  # a word cannot continue from the previous text
    nxt = np.empty(total, bool)
    nxt[-1] = False
    nxt[:-1] = is_word[1:]
    nxt[doc_start[1:][nonempty] - 1] = False
    starts = np.flatnonzero(is_word & ~prev)
    ends = np.flatnonzero(is_word & ~nxt) + 1
    if starts.size == 0:
        return np.empty(0, _U64), np.zeros(n, np.int64)

    # h(word) = sum_j cp[start+j] * mult[j % 64]: one gather and one segmented sum.
    chars = np.flatnonzero(is_word)
    first = np.searchsorted(chars, starts)  # where each word begins among the word chars
    word_of_char = np.repeat(np.arange(len(starts)), np.diff(np.append(first, len(chars))))
    j = chars - starts[word_of_char]
    with np.errstate(over="ignore"):
        vals = cp[chars].astype(_U64) * _CHAR_MULT[j & 63]
        h = np.add.reduceat(vals, first)
        h += (ends - starts).astype(_U64) * _U64(_LEN_TAG)
        fmix64(h)
    counts = np.diff(np.searchsorted(starts, doc_start))
    return h, counts


def _ngram_hashes_numpy(
    word_h: np.ndarray, counts: np.ndarray, ngram: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Combine word hashes into n-gram shingle hashes; a text with fewer than ``ngram`` words
    (but at least one) gets a single shingle of all its words."""
    n = len(counts)
    pos, salt = _shingle_constants(seed, ngram)
    n_shingles = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(n_shingles, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.empty(0, np.uint32), offsets
    word_start = np.zeros(n, np.int64)
    np.cumsum(counts[:-1], out=word_start[1:])
    doc = np.repeat(np.arange(n), n_shingles)
    first = word_start[doc] + (np.arange(total) - offsets[doc])  # first word of each shingle
    end = (word_start + counts)[doc]  # one past the text's last word
    padded = np.concatenate([word_h, np.zeros(ngram, _U64)])
    acc = np.full(total, salt, _U64)
    short = bool((counts < ngram).any())
    with np.errstate(over="ignore"):
        for k in range(ngram):
            idx = first + k
            term = padded[idx]
            if short:
                term[idx >= end] = 0
            term *= pos[k]
            acc += term
        fmix64(acc)
    return (acc >> _U64(32)).astype(np.uint32), offsets


def _shingle_hashes_numpy(
    texts: Sequence[str], ngram: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    cp, doc_start = _codepoints(texts)
    word_h, counts = _word_hashes_numpy(cp, doc_start)
    return _ngram_hashes_numpy(word_h, counts, ngram, seed)


def shingle_hashes(
    texts: Texts, ngram: int = 5, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Hash the word n-gram shingles of a batch of texts.

    Returns ``(hashes, offsets)``: ``hashes[offsets[i]:offsets[i+1]]`` are text ``i``'s shingle
    hashes (``uint32``). Texts without words have no shingles. The NumPy array program: the
    C kernel fuses this step into :func:`minhash_shard` and has no standalone twin.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    return _shingle_hashes_numpy(as_str_list(texts), ngram, seed)


# ----------------------------------------------------------------------------------------------
# signatures
# ----------------------------------------------------------------------------------------------


def signatures_from_hashes(
    hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 42
) -> np.ndarray:
    """MinHash signatures ``(n, num_perm) uint32`` from flat shingle hashes and offsets.

    Texts without shingles get the all-``0xFFFFFFFF`` signature (the empty set's). The C
    kernel where built, else the NumPy program; results are identical.
    """
    hashes = np.asarray(hashes, np.uint32)
    offsets = np.asarray(offsets, np.int64)
    if native.available():
        return native.signatures(hashes, offsets, *_perm_constants(seed, num_perm))
    return _signatures_numpy(hashes, offsets, num_perm, seed)


def _signatures_numpy(
    hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int
) -> np.ndarray:
    """The NumPy signature program.

    Work is done in blocks of ``_BLOCK`` shingles that may cut through texts; per-block minima
    are taken over segments (a text's part inside one block) and a second ``reduceat`` folds
    segments of the same text, so a single very long text needs no special case.
    """
    a, b = _perm_constants(seed, num_perm)
    a = a[:, None]
    b = b[:, None]
    n = len(offsets) - 1
    out = np.full((num_perm, n), _MAX32, np.uint32)
    counts = np.diff(offsets)
    has = np.flatnonzero(counts > 0)
    total = int(offsets[-1])
    if total == 0:
        return np.ascontiguousarray(out.T)
    doc_starts = offsets[:-1][has]
    block_starts = np.arange(0, total, _BLOCK, dtype=np.int64)
    seg_starts = np.union1d(doc_starts, block_starts)
    seg_lo = np.searchsorted(seg_starts, block_starts, side="left")
    seg_hi = np.append(seg_lo[1:], len(seg_starts))
    partial = np.empty((num_perm, len(seg_starts)), np.uint32)
    buf = np.empty((num_perm, _BLOCK), np.uint32)
    for i, c0 in enumerate(block_starts.tolist()):
        c1 = min(c0 + _BLOCK, total)
        view = buf[:, : c1 - c0]
        np.multiply(a, hashes[c0:c1], out=view)
        np.add(view, b, out=view)
        lo, hi = seg_lo[i], seg_hi[i]
        partial[:, lo:hi] = np.minimum.reduceat(view, seg_starts[lo:hi] - c0, axis=1)
    if len(seg_starts) == len(has):
        out[:, has] = partial
    else:
        seg_doc = np.searchsorted(doc_starts, seg_starts, side="right") - 1
        first_seg = np.flatnonzero(np.r_[True, seg_doc[1:] != seg_doc[:-1]])
        out[:, has] = np.minimum.reduceat(partial, first_seg, axis=1)
    return np.ascontiguousarray(out.T)


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 42
) -> np.ndarray:
    """MinHash signatures ``(len(texts), num_perm) uint32`` of word n-gram shingle sets.

    Deterministic in ``(texts, num_perm, ngram, seed)``, so shards computed on different workers
    are comparable. For best speed pass batches of a few hundred to a few thousand texts.
    """
    hashes, offsets = shingle_hashes(texts, ngram=ngram, seed=seed)
    return signatures_from_hashes(hashes, offsets, num_perm=num_perm, seed=seed)


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Fraction of equal signature slots for each pair: the MinHash estimate of Jaccard."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if native.available():
        return native.pair_jaccard(signatures, pairs)
    est = np.empty(len(pairs), np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        est[s : s + chunk] = (signatures[p[:, 0]] == signatures[p[:, 1]]).mean(axis=1)
    return est


# ----------------------------------------------------------------------------------------------
# LSH
# ----------------------------------------------------------------------------------------------


def _s_curve_errors(threshold: float, bands: np.ndarray, rows: np.ndarray, grid: int = 512):
    """Integrated false-positive and false-negative probability of LSH (b, r) banding.

    P(candidate | Jaccard s) = 1 - (1 - s**r)**b. False positives are the area under that curve
    for s < threshold; false negatives the area above it for s >= threshold.
    """
    s_lo = np.linspace(0.0, threshold, grid)[None, :]
    s_hi = np.linspace(threshold, 1.0, grid)[None, :]
    b, r = bands[:, None].astype(float), rows[:, None].astype(float)
    fp = np.trapezoid(1.0 - (1.0 - s_lo**r) ** b, s_lo, axis=1)
    fn = np.trapezoid((1.0 - s_hi**r) ** b, s_hi, axis=1)
    return fp, fn


@functools.cache
def optimal_bands_rows(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """Bands and rows (``bands * rows <= num_perm``) minimising the weighted LSH error.

    The same objective as datasketch's MinHashLSH (weighted areas of the S-curve on the wrong
    side of the threshold), evaluated for all (b, r) at once.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    bs, rs = [], []
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            bs.append(b)
            rs.append(r)
    bands, rows = np.array(bs), np.array(rs)
    fp, fn = _s_curve_errors(threshold, bands, rows)
    best = int(np.argmin(false_positive_weight * fp + false_negative_weight * fn))
    return int(bands[best]), int(rows[best])


def band_keys(signatures: np.ndarray, bands: int, rows: int, seed: int = 42) -> np.ndarray:
    """One ``uint64`` bucket key per (text, band): a random linear hash of the band's slots.

    Two bands collide only if their ``rows`` slots are equal (up to a ~2**-64 chance).
    """
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {num_perm}")
    mult = _band_constants(seed, bands, rows)
    sig = np.asarray(signatures[:, : bands * rows]).reshape(n, bands, rows).astype(_U64)
    with np.errstate(over="ignore"):
        sig *= mult
        keys = sig.sum(axis=2, dtype=_U64)
        keys += np.arange(bands, dtype=_U64) * _U64(_BAND_TAG)
    return keys


def candidate_pairs_from_keys(
    keys: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    all_pairs: bool = False,
    max_bucket: int = 256,
) -> np.ndarray:
    """Candidate pairs ``(m, 2)`` (``i < j``, unique) of rows sharing a bucket in any band.

    Grouping is a hash table per band in C and a stable argsort per band in NumPy; both give the same pairs. By default each bucket yields a star — every member
    paired with the bucket's first (smallest) row — which gives the same connected components
    as all pairs at linear cost. ``all_pairs=True`` (needed when pairs are verified, since
    verification may cut a star's edges) yields every pair of buckets up to ``max_bucket``
    members and a star for larger ones, bounding the quadratic blow-up of degenerate buckets.
    """
    keys = np.asarray(keys)
    n = keys.shape[0]
    rows_idx = np.arange(n, dtype=np.int64) if valid is None else np.flatnonzero(valid)
    if len(rows_idx) < 2:
        return np.empty((0, 2), np.int64)
    if native.available():
        codes = native.bucket_pairs(keys, rows_idx, all_pairs, max_bucket, n)
        codes.sort()
        return np.stack([codes // n, codes % n], axis=1)
    found: list[np.ndarray] = []
    for j in range(keys.shape[1]):
        k = np.asarray(keys[rows_idx, j])
        order = np.argsort(k, kind="stable")
        ks = k[order]
        new = np.empty(len(ks), bool)
        new[0] = True
        np.not_equal(ks[1:], ks[:-1], out=new[1:])
        if new.all():
            continue
        members = rows_idx[order]
        gid = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        sizes = np.diff(np.append(starts, len(ks)))
        if not all_pairs:
            dup = ~new
            found.append(np.stack([members[starts][gid[dup]], members[dup]], axis=1))
            continue
        big = sizes[gid] > max_bucket
        if big.any():
            dup = ~new & big
            found.append(np.stack([members[starts][gid[dup]], members[dup]], axis=1))
        small = ~big
        for d in range(1, int(min(sizes.max(), max_bucket))):
            same = (gid[:-d] == gid[d:]) & small[:-d]
            if not same.any():
                break
            i = np.flatnonzero(same)
            found.append(np.stack([members[i], members[i + d]], axis=1))
    if not found:
        return np.empty((0, 2), np.int64)
    return _unique_pairs(np.concatenate(found), n)


def _unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Sorted, de-duplicated ``(i, j)`` pairs with ``i < j`` (bands repeat the same pairs)."""
    if len(pairs) == 0:
        return np.empty((0, 2), np.int64)
    pairs = pairs.astype(np.int64)
    code = np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1])
    code.sort()  # then drop repeats; np.unique is far slower on millions of int64
    first = np.empty(len(code), bool)
    first[0] = True
    np.not_equal(code[1:], code[:-1], out=first[1:])
    code = code[first]
    return np.stack([code // n, code % n], axis=1)


def lsh_candidate_pairs(
    signatures: np.ndarray,
    bands: int,
    rows: int,
    *,
    seed: int = 42,
    all_pairs: bool = False,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Candidate pairs ``(m, 2)`` of texts whose signatures agree on all rows of some band.

    ``valid`` (default: texts with a non-empty shingle set) excludes texts that have no words,
    which would otherwise all collide on the empty set's signature.
    """
    if valid is None:
        valid = ~(signatures == _MAX32).all(axis=1)
    keys = band_keys(signatures, bands, rows, seed=seed)
    return candidate_pairs_from_keys(keys, valid, all_pairs=all_pairs)


# ----------------------------------------------------------------------------------------------
# clustering
# ----------------------------------------------------------------------------------------------


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over ``n`` nodes, vectorised: ``labels[i]`` = smallest node of i's component.

    Each round hooks the larger root of every unresolved edge onto the smallest root it touches
    (``np.minimum.at``), then compresses paths by pointer jumping. Parents only ever point to
    smaller indices, so there are no cycles and each root is its tree's minimum — exactly the
    "keep the earliest row" rule of dedup.
    """
    parent = np.arange(n, dtype=np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    u, v = pairs[:, 0], pairs[:, 1]
    while len(u):
        while True:  # compress to roots
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        ru, rv = parent[u], parent[v]
        open_ = ru != rv
        if not open_.any():
            break
        u, v, ru, rv = u[open_], v[open_], ru[open_], rv[open_]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
    return parent


# ----------------------------------------------------------------------------------------------
# map over shards, reduce once
# ----------------------------------------------------------------------------------------------


class MinHashShard(NamedTuple):
    """What the global reduce needs to know about one shard's texts, row for row."""

    signatures: np.ndarray  #: ``(n, num_perm) uint32``
    band_keys: np.ndarray  #: ``(n, bands) uint64``
    has_words: np.ndarray  #: ``(n,) bool``: texts without words are never clustered


class MinHashClusters(NamedTuple):
    """The result of the global reduce."""

    labels: np.ndarray  #: ``labels[i]``: the smallest row of i's cluster (the row kept)
    candidate_pairs: int  #: distinct pairs sharing an LSH bucket
    merged_pairs: int  #: candidate pairs that passed verification (all of them without it)


def minhash_shard(
    texts: Texts,
    *,
    bands: int,
    rows: int,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 42,
) -> MinHashShard:
    """The per-shard half of MinHash dedup: signatures, band keys and the has-words flag.

    A pure function of the texts and parameters, so shards computed on different workers and
    concatenated in row order give exactly the arrays one process computes for the whole corpus.
    In C, it is one parallel pass per batch (UTF-8 bytes -> words -> shingles -> signature
    -> band keys per text, texts across all cores' threads); its results equal
    :func:`minhash_signatures` + :func:`band_keys` bit for bit.
    """
    if ngram < 1 or num_perm < 1:
        raise ValueError("ngram and num_perm must be positive")
    if bands * rows > num_perm:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {num_perm}")
    if not native.available():  # the fallback: the NumPy programs, piece by piece
        hashes, offsets = shingle_hashes(texts, ngram=ngram, seed=seed)
        sig = signatures_from_hashes(hashes, offsets, num_perm, seed)
        return MinHashShard(sig, band_keys(sig, bands, rows, seed=seed), np.diff(offsets) > 0)
    buf, offsets = utf8_layout(texts)
    pos, salt = _shingle_constants(seed, ngram)
    a, b = _perm_constants(seed, num_perm)
    constants = (word_char_table(), lower_table(), _ascii_word_table(), _CHAR_MULT, ngram, pos,
                 salt, a, b, _band_constants(seed, bands, rows), _U64(_BAND_TAG))
    sigs, keys, counts = native.minhash_shard(buf, offsets, *constants)
    special = texts_containing(buf, offsets, _LOWER_IN_PYTHON)
    if len(special):
        text = text_getter(texts, buf, offsets)
        lowered = utf8_layout([text(i).lower() for i in special.tolist()])
        sigs[special], keys[special], counts[special] = native.minhash_shard(*lowered, *constants)
    return MinHashShard(sigs, keys, counts > 0)


def minhash_clusters(
    signatures: np.ndarray,
    band_keys: np.ndarray,
    has_words: np.ndarray,
    *,
    threshold: float,
    verify: bool = True,
) -> MinHashClusters:
    """The global reduce of MinHash dedup: band keys -> candidate pairs -> (verified) pairs ->
    connected components.

    Takes every shard's :class:`MinHashShard` arrays concatenated in row order (the signatures
    are only read for the verified pairs, so a memory-mapped file is fine). What it holds
    besides them is a few bytes per row and per distinct candidate pair.
    """
    n = len(has_words)
    if native.available():
        labels, n_candidates, n_merged = native.minhash_cluster(
            band_keys, np.flatnonzero(has_words), signatures, threshold, verify)
        return MinHashClusters(labels, n_candidates, n_merged)
    pairs = candidate_pairs_from_keys(band_keys, has_words, all_pairs=verify)
    n_candidates = len(pairs)
    if verify and len(pairs):
        pairs = pairs[estimated_jaccard(signatures, pairs) >= threshold]
    return MinHashClusters(connected_components(n, pairs), n_candidates, len(pairs))


# ----------------------------------------------------------------------------------------------
# the reference: plain Python on ``words()``, for the tests (never on the hot path)
# ----------------------------------------------------------------------------------------------


def shingle_hashes_reference(
    texts: Sequence[str], ngram: int = 5, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """The slow, obviously-correct twin of :func:`shingle_hashes`, built on ``words()``.

    It exists so the tests can prove that the vectorised tokeniser agrees with the package's one
    definition of a word; it is not used on the hot path.
    """
    pos, salt = _shingle_constants(seed, ngram)
    out: list[int] = []
    offsets = [0]
    mult = [int(m) for m in _CHAR_MULT]
    for text in texts:
        hs = []
        for w in words(text):
            h = 0
            for j, ch in enumerate(w):
                h = (h + ord(ch) * mult[j % 64]) & _MASK64
            h = (h + len(w) * _LEN_TAG) & _MASK64
            hs.append(int(fmix64(np.array([h], _U64))[0]))
        starts = range(len(hs) - ngram + 1) if len(hs) >= ngram else range(min(len(hs), 1))
        for s in starts:
            acc = int(salt)
            for k, h in enumerate(hs[s : s + ngram]):
                acc = (acc + h * int(pos[k])) & _MASK64
            out.append(int(fmix64(np.array([acc], _U64))[0]) >> 32)
        offsets.append(len(out))
    return np.array(out, np.uint32), np.array(offsets, np.int64)


def signatures_reference(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128,
                         seed: int = 42) -> np.ndarray:
    """The plain twin of :func:`signatures_from_hashes`: per text, per permutation, the minimum
    of ``a * x + b mod 2**32`` over its shingle hashes (``0xFFFFFFFF`` for no shingles)."""
    a, b = (v.astype(np.uint64) for v in _perm_constants(seed, num_perm))
    out = np.full((len(offsets) - 1, num_perm), _MAX32, np.uint32)
    for d in range(len(offsets) - 1):
        for x in hashes[offsets[d] : offsets[d + 1]].astype(np.uint64):
            out[d] = np.minimum(out[d], ((a * x + b) & _U64(0xFFFFFFFF)).astype(np.uint32))
    return out


def band_keys_reference(signatures: np.ndarray, bands: int, rows: int, seed: int = 42
                        ) -> np.ndarray:
    """The plain twin of :func:`band_keys`, in Python integers modulo ``2**64``."""
    mult = _band_constants(seed, bands, rows).tolist()
    keys = [[(band * _BAND_TAG + sum(int(sig[band * rows + r]) * mult[band][r]
                                     for r in range(rows))) & _MASK64 for band in range(bands)]
            for sig in signatures.tolist()]
    return np.array(keys, np.uint64).reshape(len(signatures), bands)


def minhash_shard_reference(texts: Sequence[str], *, bands: int, rows: int, num_perm: int = 128,
                            ngram: int = 5, seed: int = 42) -> MinHashShard:
    """The plain twin of :func:`minhash_shard`: shingles of ``words()``, then signatures and
    band keys one text at a time."""
    hashes, offsets = shingle_hashes_reference(texts, ngram=ngram, seed=seed)
    sig = signatures_reference(hashes, offsets, num_perm, seed)
    return MinHashShard(sig, band_keys_reference(sig, bands, rows, seed), np.diff(offsets) > 0)


def candidate_pairs_reference(keys: np.ndarray, valid: np.ndarray, *, all_pairs: bool,
                              max_bucket: int = MAX_BUCKET) -> set[tuple[int, int]]:
    """The plain twin of :func:`candidate_pairs_from_keys`: per band, a dict from key to its
    rows in order; a bucket gives all its pairs (``all_pairs`` and at most ``max_bucket``
    members) or a star (its first row with each other one)."""
    pairs: set[tuple[int, int]] = set()
    rows_idx = np.flatnonzero(valid).tolist()
    for band in range(keys.shape[1]):
        buckets: dict[int, list[int]] = {}
        for row in rows_idx:
            buckets.setdefault(int(keys[row, band]), []).append(row)
        for members in buckets.values():
            if all_pairs and len(members) <= max_bucket:
                pairs.update((i, j) for k, i in enumerate(members) for j in members[k + 1 :])
            else:
                pairs.update((members[0], j) for j in members[1:])
    return pairs


def minhash_clusters_reference(signatures: np.ndarray, band_keys: np.ndarray,
                               has_words: np.ndarray, *, threshold: float,
                               verify: bool = True) -> MinHashClusters:
    """The plain twin of :func:`minhash_clusters`: candidate pairs, each verified by counting
    equal slots, joined by a union-find whose root is always the smaller row."""
    candidates = candidate_pairs_reference(band_keys, has_words, all_pairs=verify)
    merged = sorted(p for p in candidates
                    if not verify or (signatures[p[0]] == signatures[p[1]]).mean() >= threshold)
    parent = list(range(len(has_words)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in merged:
        ri, rj = root(i), root(j)
        parent[max(ri, rj)] = min(ri, rj)
    labels = np.array([root(i) for i in range(len(has_words))], np.int64)
    return MinHashClusters(labels, len(candidates), len(merged))


# ----------------------------------------------------------------------------------------------
# the step
# ----------------------------------------------------------------------------------------------


@register_step
class MinHashDedup(Step):
    """Remove near-duplicate documents: MinHash signatures, LSH, connected components.

    Every cluster keeps its earliest row; the others are removed with reason
    ``"minhash-duplicate-of:<id of the kept row>"``. Texts with no words are never clustered
    (leave those to ``exact_dedup`` and quality filters).

    Clusters are connected components of the "similar" graph, so a chain A~B~C folds C into A
    even when A and C are further apart than the threshold — the usual behaviour of MinHash
    dedup at corpus scale, and one reason ``verify`` is on by default: it stops chains from
    running through LSH false positives.

    Memory: past ``IN_MEMORY_BYTES`` (256 MiB, ~400k rows) the signatures and band keys live
    in memory-mapped files under ``ctx.scratch("minhash")`` (removed afterwards); in RAM stay a
    few bytes per row (a flag, the cluster label) besides the returned Selection.

    Parameters:
        threshold: Jaccard similarity of shingle sets above which two texts are duplicates.
        num_perm: signature length; the estimate's standard error is ~sqrt(J(1-J)/num_perm).
        ngram: words per shingle.
        seed: seeds every hash constant (same seed -> same signatures on every shard).
        bands, rows: LSH banding; derived from ``threshold`` when left ``None``.
        verify: drop candidate pairs whose estimated Jaccard (over all ``num_perm`` slots) is
            below ``threshold`` before clustering. It costs one signature comparison per
            candidate pair and removes most LSH false positives and chaining through them.
    """

    name = "minhash_dedup"

    def __init__(
        self,
        *,
        threshold: float = 0.8,
        num_perm: int = 128,
        ngram: int = 5,
        seed: int = 42,
        bands: int | None = None,
        rows: int | None = None,
        verify: bool = True,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if num_perm < 1 or ngram < 1:
            raise ValueError("num_perm and ngram must be positive")
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither")
        if bands is not None and rows is not None and bands * rows > num_perm:
            raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {num_perm}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        self.bands = bands
        self.rows = rows
        self.verify = verify

    def banding(self) -> tuple[int, int]:
        """The (bands, rows) in use: given, or optimal for the threshold.

        With ``verify`` on, a false candidate costs one signature comparison and is not
        merged, while a missed candidate is a duplicate lost for good; so the optimum weighs a
        miss 19 times a false candidate (for 0.8 and 128 slots: 16 bands of 8 rows, which makes
        a pair at the threshold a candidate with probability 0.95, at 0.5 with 0.06).
        Without ``verify`` every candidate is merged, so both errors weigh the same (9 x 13).
        """
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        weights = (0.05, 0.95) if self.verify else (0.5, 0.5)
        return optimal_bands_rows(self.threshold, self.num_perm, *weights)

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        n = len(ds)
        bands, rows = self.banding()
        if n == 0:
            return Selection.keep_all(0)
        # A big corpus's signatures and band keys go to disk, not RAM: 4 bytes x num_perm + 8
        # bytes x bands is ~0.6 KB a row, 6 GB for ten million rows; the page cache keeps what
        # fits. A small one stays in memory, where writing a fresh file would only cost time.
        on_disk = n * (4 * self.num_perm + 8 * bands) > IN_MEMORY_BYTES
        paths: list[Path] = []
        if on_disk:
            scratch = ctx.scratch("minhash")
            tag = uuid.uuid4().hex[:8]
            paths = [scratch / f"signatures-{tag}.npy", scratch / f"band-keys-{tag}.npy"]
            sigs = np.lib.format.open_memmap(
                paths[0], mode="w+", dtype=np.uint32, shape=(n, self.num_perm)
            )
            keys = np.lib.format.open_memmap(paths[1], mode="w+", dtype=np.uint64, shape=(n, bands))
        else:
            sigs = np.empty((n, self.num_perm), np.uint32)
            keys = np.empty((n, bands), np.uint64)
        try:
            has_words = np.zeros(n, bool)
            start = 0
            batch_size = max(ctx.batch_size, KERNEL_BATCH)
            for batch in ctx.iter_text_arrays(ds, "minhash signatures", batch_size):
                shard = minhash_shard(
                    batch, bands=bands, rows=rows, num_perm=self.num_perm, ngram=self.ngram,
                    seed=self.seed,
                )
                end = start + len(batch)
                sigs[start:end] = shard.signatures
                keys[start:end] = shard.band_keys
                has_words[start:end] = shard.has_words
                start = end
            return self.select_from_features(
                ds, ctx, {"signatures": sigs, "band_keys": keys, "has_words": has_words})
        finally:
            del sigs, keys
            for path in paths:
                try:
                    os.remove(path)
                except OSError:
                    pass

    def row_features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The map half: :func:`minhash_shard`'s signatures, band keys and has-words flags."""
        bands, rows = self.banding()
        shard = minhash_shard(texts, bands=bands, rows=rows, num_perm=self.num_perm,
                              ngram=self.ngram, seed=self.seed)
        return {"signatures": shard.signatures, "band_keys": shard.band_keys,
                "has_words": shard.has_words}

    def select_from_features(self, ds: Dataset, ctx: StepContext,
                             features: dict[str, np.ndarray]) -> Selection:
        """The reduce half: :func:`minhash_clusters`, each cluster keeping its earliest row."""
        n = len(features["has_words"])
        if n == 0:
            return Selection.keep_all(0)
        clusters = minhash_clusters(features["signatures"], features["band_keys"],
                                    features["has_words"], threshold=self.threshold,
                                    verify=self.verify)
        return self.select_from_labels(ds, ctx, clusters.labels, {
            "candidate_pairs": clusters.candidate_pairs, "merged_pairs": clusters.merged_pairs})

    def distributed_reduce(self) -> NearDuplicates:
        """Band keys shuffle to bucket owners, pairs are verified where the signatures are,
        components join the verified edges: the same pair rule as :func:`minhash_clusters`
        (all pairs of buckets up to ``MAX_BUCKET`` members with ``verify``, else a star)."""
        return NearDuplicates(
            signatures="signatures", band_keys="band_keys", valid="has_words",
            bucket_pairs=functools.partial(candidate_pairs_from_keys, all_pairs=self.verify,
                                           max_bucket=MAX_BUCKET),
            similarity=estimated_jaccard,
            threshold=self.threshold if self.verify else None,
            components=connected_components)

    def select_from_labels(self, ds: Dataset, ctx: StepContext, labels: np.ndarray,
                           stats: dict) -> Selection:
        """Each cluster keeps its earliest row; the others name it."""
        n = len(labels)
        if n == 0:
            return Selection.keep_all(0)
        bands, rows = self.banding()
        keep = labels == np.arange(n)
        detail = np.full(n, "", dtype=object)
        removed = np.flatnonzero(~keep)
        if len(removed):
            reps, inverse = np.unique(labels[removed], return_inverse=True)
            detail[removed] = row_ids(ds, ctx.id_field, reps)[inverse]
        n_clusters = int(len(np.unique(labels[removed]))) if len(removed) else 0
        stats = {
            "bands": bands,
            "rows": rows,
            "candidate_pairs": int(stats["candidate_pairs"]),
            "merged_pairs": int(stats["merged_pairs"]),
            "duplicate_clusters": n_clusters,
            "removed": int(len(removed)),
            "lsh_threshold": round(float((1.0 / bands) ** (1.0 / rows)), 4),
        }
        return Selection.from_mask(keep, "minhash-duplicate-of", detail, stats=stats)
