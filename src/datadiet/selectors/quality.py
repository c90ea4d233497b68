"""Heuristic quality filtering: the Gopher rules (Rae et al. 2021, appendix A) and C4's (Raffel
et al. 2020).

Why heuristics at all: they cost microseconds per document, need no model, and each removal is
explainable by one number and one threshold ("37% of its lines are duplicates"). Gopher showed
that these simple rules remove most boiler-plate, spam and machine-generated junk from web text
before any expensive model-based step runs — so this step is meant to go early in a pipeline.

Every rule is one keyword-only threshold with the paper's default; ``None`` switches the rule
off. A removed row gets the kind ``quality:<rule>`` of the *first* rule it fails (rules run in a
fixed, documented order: cheap document statistics, then line structure, then repetition, then
the C4 options), and the measured value as the reason's detail, e.g.
``quality:max_symbol_word_ratio:0.31``. The selection's ``stats`` counts removals per rule.

Definitions (the paper leaves some open; these are the choices, stated once):

* a *word* (for the word-count, mean-length, symbol and alphabetic rules) is a whitespace token;
  word count and mean word length ignore tokens made only of punctuation/symbols, so that
  tokenised text such as WikiText (``" , "``) is measured like ordinary prose;
* the alphabetic rule counts every whitespace token, as Gopher does — so pre-tokenised text
  with free-standing punctuation fails it more often (16% of long WikiText-2 paragraphs as
  distributed, 1% once detokenised): detokenise such corpora first or lower the threshold;
* the repetition rules work on the package's word tokens (:func:`datadiet.pipeline.text.words`:
  lower-cased ``\\w+``), so that punctuation and case do not hide a repeated phrase;
* a duplicate line/paragraph/n-gram is a *repeat*: its first occurrence is not counted, so a
  document is judged by how much of it is redundant;
* lines are split on ``\\n``, paragraphs on blank lines; empty ones are ignored.

There is no language identification: the stop-word rule is Gopher's cheap proxy for "English
prose".

Map over shards, reduce per row: :func:`quality_feature_matrix` (texts -> one row of features per
text, compiled and parallel) is the per-shard function; :meth:`QualityFilter.first_failures`
(feature rows -> first failing rule) the reduce, which needs nothing global. The Python
definitions (:func:`quality_features`, :meth:`QualityFilter.check`) are the specification the
compiled kernel is tested against, row for row.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import Step, StepContext, register_step
from datadiet.pipeline.text import words
from datadiet.selectors.hashing import (
    KERNEL_BATCH,
    Texts,
    as_str_list,
    lower_table,
    regex_char_table,
    space_table,
    text_getter,
    texts_containing,
    utf8_layout,
    word_char_table,
)
from datadiet.selectors.jit import jit, nb_decode, nb_fmix64, numba_enabled, prange

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import Dataset

#: Gopher's stop-word rule: a document must contain at least two of these English words.
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

#: Characters that open a bulleted line (after leading whitespace).
BULLETS = ("•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "∙", "➢", "➤", "►", "-", "*", "–")

#: Gopher table A1: "fraction of characters in the most common n-gram", n = 2..4.
GOPHER_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
#: Gopher table A1: "fraction of characters in duplicate n-grams", n = 5..10.
GOPHER_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}

#: C4 drops lines containing these (cookie and policy notices); here the document is flagged.
C4_POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)

_HAS_WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit: the token is not pure punctuation
_HAS_ALPHA = re.compile(r"[^\W\d_]")  # a letter
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?]+(?=[\s\"'”’)\]]|$)")
_ELLIPSES = ("...", "…")

_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)


# -- features ---------------------------------------------------------------------------------


def _repeat_fraction(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / len(items), (dup_chars / total_chars if total_chars else 0.0)


def _ngram_hashes(ids: np.ndarray, max_n: int) -> list[np.ndarray]:
    """Rolling 64-bit hashes of every word n-gram, n = 1..max_n (index n-1).

    Hashing instead of comparing tuples keeps each n a handful of NumPy calls; a 64-bit
    collision only ever makes a heuristic slightly stricter, on one document in ~10^15.
    """
    out = [ids.astype(np.uint64) + np.uint64(1)]
    with np.errstate(over="ignore"):
        for n in range(2, max_n + 1):
            prev = out[-1]
            if len(prev) < 2:
                break
            out.append(prev[:-1] * _NGRAM_MULT + out[0][n - 1 :])
    return out


def _ngram_repetition(
    toks: list[str], top_ns: Iterable[int], dup_ns: Iterable[int]
) -> dict[str, float]:
    """Gopher's n-gram repetition features over word tokens."""
    top_ns, dup_ns = sorted(top_ns), sorted(dup_ns)
    feats: dict[str, float] = {f"top_{n}gram_char_fraction": 0.0 for n in top_ns}
    feats.update({f"dup_{n}gram_char_fraction": 0.0 for n in dup_ns})
    n_tok = len(toks)
    max_n = max([*top_ns, *dup_ns], default=0)
    if n_tok < 2 or max_n < 2:
        return feats
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in toks), np.int64, n_tok)
    lens = np.fromiter(map(len, toks), np.int64, n_tok)
    csum = np.concatenate(([0], np.cumsum(lens)))
    total = float(csum[-1])
    if total == 0:
        return feats
    hashes = _ngram_hashes(ids, max_n)
    for n in top_ns:
        if n > len(hashes):
            continue
        _, first, counts = np.unique(hashes[n - 1], return_index=True, return_counts=True)
        best = counts.max()
        if best < 2:
            continue
        cand = first[counts == best]
        chars = (csum[cand + n] - csum[cand]).max()
        feats[f"top_{n}gram_char_fraction"] = min(1.0, float(chars * best) / total)
    for n in dup_ns:
        if n > len(hashes):
            continue
        h = hashes[n - 1]
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        repeat_at = np.flatnonzero(first[inverse] != np.arange(len(h)))
        if len(repeat_at) == 0:
            continue
        # Mark the words covered by any repeated occurrence (overlaps counted once).
        cover = np.zeros(n_tok + 1, np.int64)
        np.add.at(cover, repeat_at, 1)
        np.add.at(cover, repeat_at + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        feats[f"dup_{n}gram_char_fraction"] = float(lens[covered].sum()) / total
    return feats


class _Doc:
    """Lazily computed feature groups of one text, so the filter stops at the first failure
    without paying for the (dearer) repetition features of a document already rejected."""

    def __init__(self, text: str, top_ns: Iterable[int] = (), dup_ns: Iterable[int] = ()):
        self.text = text or ""
        self.top_ns = tuple(top_ns)
        self.dup_ns = tuple(dup_ns)

    @cached_property
    def word_stats(self) -> dict[str, float]:
        text = self.text
        tokens = text.split()
        content = [t for t in tokens if _HAS_WORD_CHAR.search(t)]
        n_words = len(content)
        denom = max(n_words, 1)
        n_hash = text.count("#")
        n_ellipsis = text.count("...") + text.count("…")
        n_alpha = sum(1 for t in tokens if _HAS_ALPHA.search(t))
        return {
            "n_words": float(n_words),
            "mean_word_length": (sum(map(len, content)) / n_words) if n_words else 0.0,
            "hash_word_ratio": n_hash / denom,
            "ellipsis_word_ratio": n_ellipsis / denom,
            "symbol_word_ratio": max(n_hash, n_ellipsis) / denom,
            "alpha_word_ratio": (n_alpha / len(tokens)) if tokens else 0.0,
            "stop_words": float(sum(1 for w in self.word_tokens if w in GOPHER_STOP_WORDS)),
        }

    @cached_property
    def word_tokens(self) -> list[str]:
        return words(self.text)

    @cached_property
    def lines(self) -> list[str]:
        return [s for s in (ln.strip() for ln in self.text.split("\n")) if s]

    @cached_property
    def line_stats(self) -> dict[str, float]:
        lines = self.lines
        n = max(len(lines), 1)
        dup_lines, dup_line_chars = _repeat_fraction(lines)
        paragraphs = [s for s in (p.strip() for p in _PARAGRAPH_SPLIT.split(self.text)) if s]
        dup_pars, dup_par_chars = _repeat_fraction(paragraphs)
        return {
            "n_lines": float(len(lines)),
            "bullet_line_ratio": sum(1 for ln in lines if ln.startswith(BULLETS)) / n,
            "ellipsis_line_ratio": sum(1 for ln in lines if ln.endswith(_ELLIPSES)) / n,
            "duplicate_line_fraction": dup_lines,
            "duplicate_line_char_fraction": dup_line_chars,
            "duplicate_paragraph_fraction": dup_pars,
            "duplicate_paragraph_char_fraction": dup_par_chars,
        }

    @cached_property
    def ngram_stats(self) -> dict[str, float]:
        return _ngram_repetition(self.word_tokens, self.top_ns, self.dup_ns)

    @cached_property
    def c4_stats(self) -> dict[str, float]:
        lower_lines = [ln.lower() for ln in self.lines]
        return {
            "has_lorem_ipsum": float("lorem ipsum" in self.text.lower()),
            "has_curly_brace": float("{" in self.text),
            "javascript_lines": float(sum(1 for ln in lower_lines if "javascript" in ln)),
            "policy_lines": float(
                sum(1 for ln in lower_lines if any(p in ln for p in C4_POLICY_PHRASES))
            ),
            "n_sentences": float(len(_SENTENCE_END.findall(self.text))),
        }

    def get(self, feature: str) -> float:
        """One feature, computing only the group it belongs to."""
        if feature.endswith("gram_char_fraction"):
            return self.ngram_stats[feature]
        if feature in _C4_FEATURES:
            return self.c4_stats[feature]
        if feature in _LINE_FEATURES:
            return self.line_stats[feature]
        return self.word_stats[feature]


_LINE_FEATURES = frozenset({
    "n_lines", "bullet_line_ratio", "ellipsis_line_ratio", "duplicate_line_fraction",
    "duplicate_line_char_fraction", "duplicate_paragraph_fraction",
    "duplicate_paragraph_char_fraction",
})
_C4_FEATURES = frozenset(
    {"has_lorem_ipsum", "has_curly_brace", "javascript_lines", "policy_lines", "n_sentences"}
)


def quality_features(
    text: str,
    *,
    top_ngrams: Iterable[int] = tuple(GOPHER_TOP_NGRAM),
    dup_ngrams: Iterable[int] = tuple(GOPHER_DUP_NGRAM),
) -> dict[str, float]:
    """Every feature the quality rules look at, for one text (a pure function, shard-safe).

    Useful on its own: to plot a corpus's distributions before choosing thresholds, or to
    explain why one document was dropped.
    """
    doc = _Doc(text, top_ngrams, dup_ngrams)
    return {**doc.word_stats, **doc.line_stats, **doc.ngram_stats, **doc.c4_stats}


# -- the compiled features: every text of a batch in one parallel pass --------------------------
#
# Why a kernel: the Python definitions above cost ~0.4 ms a document (list of tokens, a set of
# lines, a vocabulary dict and nine ``np.unique`` calls for the n-gram rules), which made the
# step 30x slower than the dedup steps. The kernel computes the same numbers from the UTF-8
# bytes — tokens, words, lines, paragraphs and n-grams as index ranges over one code-point
# buffer, repeats found with hash tables that compare content on a hash match — and the tests
# check it against :func:`quality_features` on real and random text. Two things it leaves to
# Python: ``str.lower``'s context rules (a text with U+0130 or a capital sigma goes through the
# Python definitions) and nothing else.

_CLS_WORD = 1  # re ``\w``
_CLS_ALNUM = 2  # ``[^\W_]``: a letter or digit (a token with one is a word)
_CLS_ALPHA = 4  # ``[^\W\d_]``: a letter (a token with one counts for the alphabetic rule)
_CLS_SPACE = 8  # ``str.isspace``: what ``split()``, ``strip()`` and ``\s`` split on

_WORD_STATS = (
    "n_words", "mean_word_length", "hash_word_ratio", "ellipsis_word_ratio",
    "symbol_word_ratio", "alpha_word_ratio", "stop_words",
)
_LINE_STATS = (
    "n_lines", "bullet_line_ratio", "ellipsis_line_ratio", "duplicate_line_fraction",
    "duplicate_line_char_fraction", "duplicate_paragraph_fraction",
    "duplicate_paragraph_char_fraction",
)
_C4_STATS = ("has_lorem_ipsum", "has_curly_brace", "javascript_lines", "policy_lines", "n_sentences")
_SENTENCE_FOLLOWERS = "\"'”’)]"  # the lookahead of ``_SENTENCE_END`` besides white space
_WORD_HASH_MULT = 0x100000001B3  # FNV-1a's prime, for the kernel's word hashes
_JAVASCRIPT = np.array([ord(c) for c in "javascript"], np.int64)
_LOREM = np.array([ord(c) for c in "lorem ipsum"], np.int64)


def quality_feature_names(
    top_ngrams: Iterable[int] = tuple(GOPHER_TOP_NGRAM),
    dup_ngrams: Iterable[int] = tuple(GOPHER_DUP_NGRAM),
    c4: bool = True,
) -> list[str]:
    """The columns of :func:`quality_feature_matrix`, in order (the keys of
    :func:`quality_features` for the same n-gram sizes, less the C4 ones without ``c4``)."""
    return [
        *_WORD_STATS, *_LINE_STATS,
        *(f"top_{n}gram_char_fraction" for n in top_ngrams),
        *(f"dup_{n}gram_char_fraction" for n in dup_ngrams),
        *(_C4_STATS if c4 else ()),
    ]


def quality_feature_matrix(
    texts: Texts,
    *,
    top_ngrams: Iterable[int] = tuple(GOPHER_TOP_NGRAM),
    dup_ngrams: Iterable[int] = tuple(GOPHER_DUP_NGRAM),
    c4: bool = True,
) -> np.ndarray:
    """Every quality feature of every text: ``(len(texts), n_features) float64``, columns as
    :func:`quality_feature_names`. The n-gram sizes and ``c4`` choose the features (the step
    computes only those its rules read: the C4 line searches cost as much as the rest).

    The per-shard half of the quality step (a pure function of the texts, so shards agree); the
    thresholds are applied row by row afterwards. Each row equals :func:`quality_features` of
    its text. Compiled (numba), texts run in parallel on all threads; without numba the rows
    come from the Python definitions.
    """
    top_ns = np.array(sorted(int(n) for n in top_ngrams), np.int64)
    dup_ns = np.array(sorted(int(n) for n in dup_ngrams), np.int64)
    if (top_ns < 1).any() or (dup_ns < 1).any():
        raise ValueError("n-gram sizes must be positive")
    names = quality_feature_names(top_ns.tolist(), dup_ns.tolist(), c4)
    if not numba_enabled(len(texts)):
        rows = [quality_features(t, top_ngrams=top_ns.tolist(), dup_ngrams=dup_ns.tolist())
                for t in as_str_list(texts)]
        return np.array([[r[k] for k in names] for r in rows], np.float64).reshape(-1, len(names))
    if isinstance(texts, list) and None in texts:
        texts = as_str_list(texts)
    buf, offsets = utf8_layout(texts)
    out = _nb_quality(buf, offsets, *_kernel_constants(), top_ns, dup_ns, c4)
    text = text_getter(texts, buf, offsets)
    for i in texts_containing(buf, offsets, "\u0130\u03a3").tolist():  # str.lower's context rules
        ref = quality_features(text(i), top_ngrams=top_ns.tolist(), dup_ngrams=dup_ns.tolist())
        out[i] = [ref[k] for k in names]
    return out


@functools.cache
def _char_classes() -> np.ndarray:
    """Per code point, the ``_CLS_*`` bits, from the very classes the Python rules use."""
    return (
        word_char_table() * _CLS_WORD
        | regex_char_table(_HAS_WORD_CHAR.pattern) * _CLS_ALNUM
        | regex_char_table(_HAS_ALPHA.pattern) * _CLS_ALPHA
        | space_table() * _CLS_SPACE
    ).astype(np.uint8)


def _code_points(words_: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as a zero-padded ``(k, longest)`` code-point matrix plus their lengths."""
    words_ = list(words_)
    longest = max(map(len, words_))
    mat = np.zeros((len(words_), longest), np.int64)
    for r, w in enumerate(words_):
        mat[r, : len(w)] = [ord(c) for c in w]
    return mat, np.array([len(w) for w in words_], np.int64)


@functools.cache
def _kernel_constants() -> tuple[np.ndarray, ...]:
    assert all(len(b) == 1 for b in BULLETS)
    stop_cp, stop_len = _code_points(sorted(GOPHER_STOP_WORDS))
    policy_cp, policy_len = _code_points(C4_POLICY_PHRASES)
    return (
        _char_classes(), lower_table(), stop_cp, stop_len, policy_cp, policy_len,
        np.array([ord(b) for b in BULLETS], np.int64),
        np.array([ord(c) for c in _SENTENCE_FOLLOWERS], np.int64),
    )


@jit()
def _nb_contains(cps, a, b, pattern, plen):  # noqa: ANN001, ANN202
    """Whether ``cps[a:b]`` contains ``pattern[:plen]``."""
    for s in range(a, b - plen + 1):
        k = 0
        while k < plen and cps[s + k] == pattern[k]:
            k += 1
        if k == plen:
            return True
    return False


@jit()
def _nb_repeats(cps, starts, ends, count, table):  # noqa: ANN001, ANN202
    """``_repeat_fraction`` of the items ``cps[starts[i]:ends[i]]``: a hash set of items that
    compares their code points on a hash match, so equal means equal."""
    if count == 0:
        return 0.0, 0.0
    cap = 16
    while cap < 2 * count:
        cap *= 2
    mask = np.uint64(cap - 1)
    table[:cap] = -1
    dup_items = 0
    dup_chars = 0
    total = 0
    for it in range(count):
        a = starts[it]
        b = ends[it]
        h = np.uint64(b - a)
        for k in range(a, b):
            h = (h ^ np.uint64(cps[k])) * np.uint64(_WORD_HASH_MULT)
        slot = nb_fmix64(h) & mask
        total += b - a
        while True:
            other = table[slot]
            if other < 0:
                table[slot] = it
                break
            oa = starts[other]
            ob = ends[other]
            same = ob - oa == b - a
            k = 0
            while same and k < b - a:
                same = cps[oa + k] == cps[a + k]
                k += 1
            if same:
                dup_items += 1
                dup_chars += b - a
                break
            slot = (slot + np.uint64(1)) & mask
    return dup_items / count, (dup_chars / total if total else 0.0)


@jit()
def _nb_ngram_features(whash, wlen, nw, top_ns, dup_ns, out, col_top, col_dup, grams, cover, keys, heads, counts):  # noqa: ANN001, ANN202, E501
    """Gopher's n-gram repetition features from word hashes and lengths (``_ngram_repetition``).

    Per n, one pass over the n-grams with a hash table (``keys``: n-gram hash, ``heads``: its
    first occurrence, ``counts``: how often seen): a repeat marks the words it covers
    (``cover``, a difference array), and the most frequent n-gram's count and characters are
    tracked as counts grow. ``grams`` holds the rolling hashes, rolled from n - 1 to n in place.
    """
    max_n = 0
    for n in top_ns:
        max_n = max(max_n, n)
    for n in dup_ns:
        max_n = max(max_n, n)
    if nw < 2 or max_n < 2:
        return
    total = 0
    for w in range(nw):
        total += wlen[w]
        grams[w] = whash[w]
    cap = 16
    while cap < 2 * nw:
        cap *= 2
    mask = np.uint64(cap - 1)
    for n in range(1, max_n + 1):
        if n > nw:
            break
        if n > 1:  # roll: the n-gram at i extends the (n-1)-gram at i by word i + n - 1
            for i in range(nw - n + 1):
                grams[i] = grams[i] * np.uint64(0x9E3779B97F4A7C15) + whash[i + n - 1]
        ti = di = -1
        for t in range(top_ns.size):
            if top_ns[t] == n:
                ti = t
        for t in range(dup_ns.size):
            if dup_ns[t] == n:
                di = t
        if ti < 0 and di < 0:
            continue
        heads[:cap] = -1
        cover[: nw + 1] = 0
        best = best_chars = 0
        for i in range(nw - n + 1):
            g = grams[i]
            slot = nb_fmix64(g) & mask
            while heads[slot] >= 0 and keys[slot] != g:
                slot = (slot + np.uint64(1)) & mask
            if heads[slot] < 0:
                heads[slot] = i
                keys[slot] = g
                counts[slot] = count = 1
            else:
                counts[slot] += 1
                count = counts[slot]
                cover[i] += 1
                cover[i + n] -= 1
            if count >= best:
                first = heads[slot]
                chars = 0
                for w in range(first, first + n):
                    chars += wlen[w]
                if count > best:
                    best = count
                    best_chars = chars
                elif chars > best_chars:
                    best_chars = chars
        if ti >= 0 and best >= 2:
            out[col_top + ti] = min(1.0, (best_chars * best) / total)
        if di >= 0:
            covered = run = 0
            for w in range(nw):
                run += cover[w]
                if run > 0:
                    covered += wlen[w]
            out[col_dup + di] = covered / total


@jit()
def _nb_symbols(cps, size):  # noqa: ANN001, ANN202
    """``text.count("#")``, ``text.count("...") + text.count("…")``, and whether a ``{`` occurs."""
    n_hash = n_ellipsis = 0
    curly = False
    k = 0
    while k < size:
        ch = cps[k]
        if ch == 35:  # '#'
            n_hash += 1
        elif ch == 0x2026:  # '…'
            n_ellipsis += 1
        elif ch == 123:  # '{'
            curly = True
        if ch == 46 and k + 2 < size and cps[k + 1] == 46 and cps[k + 2] == 46:
            n_ellipsis += 1  # str.count does not overlap: "...." is one
            k += 3
        else:
            k += 1
    return n_hash, n_ellipsis, curly


@jit()
def _nb_sentences(cps, size, cls, followers):  # noqa: ANN001, ANN202
    """Matches of ``_SENTENCE_END``: a maximal run of ``.!?`` followed by white space, a closing
    quote or bracket, or the end (a shorter prefix of a run is followed by ``.!?``: no match)."""
    n = 0
    k = 0
    while k < size:
        ch = cps[k]
        if ch != 46 and ch != 33 and ch != 63:
            k += 1
            continue
        while k < size and (cps[k] == 46 or cps[k] == 33 or cps[k] == 63):
            k += 1
        if k == size or cls[cps[k]] & _CLS_SPACE:
            n += 1
            continue
        for f in followers:
            if cps[k] == f:
                n += 1
                break
    return n


@jit()
def _nb_tokens(cps, size, cls):  # noqa: ANN001, ANN202
    """Over ``text.split()``: tokens, word tokens (with a letter or digit), their total length,
    and tokens with a letter."""
    n_tokens = n_words = sum_len = n_alpha = 0
    k = 0
    while k < size:
        if cls[cps[k]] & _CLS_SPACE:
            k += 1
            continue
        s = k
        flags = 0
        while k < size and not cls[cps[k]] & _CLS_SPACE:
            flags |= cls[cps[k]]
            k += 1
        n_tokens += 1
        if flags & _CLS_ALNUM:
            n_words += 1
            sum_len += k - s
        if flags & _CLS_ALPHA:
            n_alpha += 1
    return n_tokens, n_words, sum_len, n_alpha


@jit()
def _nb_words(low, size, cls, stop_cp, stop_len, whash, wlen):  # noqa: ANN001, ANN202
    """``words()`` of the lower-cased text as hashes and lengths; returns (words, stop words)."""
    nw = n_stop = 0
    k = 0
    while k < size:
        if not cls[low[k]] & _CLS_WORD:
            k += 1
            continue
        s = k
        h = np.uint64(0xCBF29CE484222325)
        while k < size and cls[low[k]] & _CLS_WORD:
            h = (h ^ np.uint64(low[k])) * np.uint64(_WORD_HASH_MULT)
            k += 1
        whash[nw] = nb_fmix64(h + np.uint64(k - s))
        wlen[nw] = k - s
        nw += 1
        for sw in range(stop_len.size):
            if stop_len[sw] == k - s:
                j = 0
                while j < k - s and low[s + j] == stop_cp[sw, j]:
                    j += 1
                if j == k - s:
                    n_stop += 1
                    break
    return nw, n_stop


@jit()
def _nb_lines(cps, low, size, cls, bullets, policy_cp, policy_len, starts, ends, c4):  # noqa: ANN001, ANN202
    """Lines (split on ``\\n``, stripped, empty ones dropped) into ``starts``/``ends``; returns
    (lines, bulleted, ending in an ellipsis, mentioning javascript, with a policy phrase); the
    last two only with ``c4``."""
    n_lines = n_bullet = n_ellipsis = n_js = n_policy = 0
    a = 0
    while a <= size:
        b = a
        while b < size and cps[b] != 10:
            b += 1
        nxt = b + 1
        while a < b and cls[cps[a]] & _CLS_SPACE:
            a += 1
        while b > a and cls[cps[b - 1]] & _CLS_SPACE:
            b -= 1
        if a < b:
            starts[n_lines] = a
            ends[n_lines] = b
            n_lines += 1
            for bullet in bullets:
                if cps[a] == bullet:
                    n_bullet += 1
                    break
            if cps[b - 1] == 0x2026 or (
                b - a >= 3 and cps[b - 1] == 46 and cps[b - 2] == 46 and cps[b - 3] == 46
            ):
                n_ellipsis += 1
            if not c4:
                a = nxt
                continue
            n_js += _nb_contains(low, a, b, _JAVASCRIPT, _JAVASCRIPT.size)
            for ph in range(policy_len.size):
                if _nb_contains(low, a, b, policy_cp[ph], policy_len[ph]):
                    n_policy += 1
                    break
        a = nxt
    return n_lines, n_bullet, n_ellipsis, n_js, n_policy


@jit()
def _nb_paragraphs(cps, size, cls, starts, ends):  # noqa: ANN001, ANN202
    """Paragraphs as ``_PARAGRAPH_SPLIT.split`` + ``strip`` find them, into ``starts``/``ends``.

    ``\\n\\s*\\n`` matches from the first to the last newline of a white-space run that holds
    two or more; stripping the pieces then removes the rest of the run, so a piece is whatever
    lies between such runs, stripped.
    """
    n_par = a = k = 0
    while k <= size:
        if k < size and not cls[cps[k]] & _CLS_SPACE:
            k += 1
            continue
        if k < size:
            r = k
            newlines = 0
            while r < size and cls[cps[r]] & _CLS_SPACE:
                newlines += cps[r] == 10
                r += 1
            if newlines < 2:
                k = r
                continue
            b, nxt = k, r
        else:
            b, nxt = size, size + 1
        while a < b and cls[cps[a]] & _CLS_SPACE:
            a += 1
        while b > a and cls[cps[b - 1]] & _CLS_SPACE:
            b -= 1
        if a < b:
            starts[n_par] = a
            ends[n_par] = b
            n_par += 1
        a = k = nxt
    return n_par


@jit()
def _nb_text_features(cps, low, size, cls, stop_cp, stop_len, policy_cp, policy_len, bullets, followers, top_ns, dup_ns, c4, scratch, out):  # noqa: ANN001, ANN202, E501
    """One row of the feature matrix from a text's code points (``cps``) and their lower case
    (``low``); ``scratch`` holds the per-text work arrays, reused across texts."""
    whash, wlen, grams, cover, starts, ends, table, keys, counts = scratch
    n_hash, n_ellipsis, curly = _nb_symbols(cps, size)
    n_tokens, n_words, sum_len, n_alpha = _nb_tokens(cps, size, cls)
    nw, n_stop = _nb_words(low, size, cls, stop_cp, stop_len, whash, wlen)
    denom = max(n_words, 1)
    out[0] = n_words
    out[1] = sum_len / n_words if n_words else 0.0
    out[2] = n_hash / denom
    out[3] = n_ellipsis / denom
    out[4] = max(n_hash, n_ellipsis) / denom
    out[5] = n_alpha / n_tokens if n_tokens else 0.0
    out[6] = n_stop
    n_lines, n_bullet, n_ell_line, n_js, n_policy = _nb_lines(
        cps, low, size, cls, bullets, policy_cp, policy_len, starts, ends, c4
    )
    out[7] = n_lines
    out[8] = n_bullet / max(n_lines, 1)
    out[9] = n_ell_line / max(n_lines, 1)
    out[10], out[11] = _nb_repeats(cps, starts, ends, n_lines, table)
    n_par = _nb_paragraphs(cps, size, cls, starts, ends)
    out[12], out[13] = _nb_repeats(cps, starts, ends, n_par, table)
    col_dup = 14 + top_ns.size
    _nb_ngram_features(whash, wlen, nw, top_ns, dup_ns, out, 14, col_dup, grams, cover, keys,
                       table, counts)
    if not c4:
        return
    col_c4 = col_dup + dup_ns.size
    out[col_c4] = _nb_contains(low, 0, size, _LOREM, _LOREM.size)
    out[col_c4 + 1] = curly
    out[col_c4 + 2] = n_js
    out[col_c4 + 3] = n_policy
    out[col_c4 + 4] = _nb_sentences(cps, size, cls, followers)


@jit(parallel=True)
def _nb_quality(buf, offsets, cls, lower, stop_cp, stop_len, policy_cp, policy_len, bullets, followers, top_ns, dup_ns, c4):  # noqa: ANN001, ANN202, E501
    """The feature matrix of a UTF-8 batch (see :func:`quality_feature_matrix`): chunks of 32
    texts in parallel, each chunk with its own work arrays sized for its longest text."""
    n = offsets.size - 1
    feats = np.zeros((n, 14 + top_ns.size + dup_ns.size + (len(_C4_STATS) if c4 else 0)))
    chunk = 32
    for c in prange((n + chunk - 1) // chunk):
        lo = c * chunk
        hi = min(n, lo + chunk)
        longest = 1
        for d in range(lo, hi):
            longest = max(longest, offsets[d + 1] - offsets[d])
        cps = np.empty(longest, np.int64)
        low = np.empty(longest, np.int64)
        scratch = (
            np.empty(longest, np.uint64),  # word hashes
            np.empty(longest, np.int64),  # word lengths
            np.empty(longest, np.uint64),  # n-gram hashes
            np.empty(longest + 1, np.int64),  # n-gram cover counts
            np.empty(longest + 1, np.int64),  # line / paragraph starts
            np.empty(longest + 1, np.int64),  # line / paragraph ends
            np.empty(4 * longest + 16, np.int64),  # hash table slots (repeats, n-grams)
            np.empty(4 * longest + 16, np.uint64),  # n-gram hash table keys
            np.empty(4 * longest + 16, np.int64),  # n-gram hash table counts
        )
        for d in range(lo, hi):
            size = 0
            i = offsets[d]
            while i < offsets[d + 1]:
                cp, i = nb_decode(buf, i)
                cps[size] = cp
                low[size] = lower[cp] if cp < lower.size else cp
                size += 1
            _nb_text_features(cps, low, size, cls, stop_cp, stop_len, policy_cp, policy_len,
                              bullets, followers, top_ns, dup_ns, c4, scratch, feats[d])
    return feats


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """Remove a document when ``feature`` is below (``"min"``) or above (``"max"``) ``limit``."""

    name: str
    feature: str
    limit: float
    direction: str  # "min" or "max"

    def fails(self, value: float) -> bool:
        return value < self.limit if self.direction == "min" else value > self.limit


def _int_keyed(mapping: Mapping[Any, float] | None) -> dict[int, float] | None:
    """Normalise an n -> threshold mapping; JSON manifests turn int keys into strings."""
    if mapping is None:
        return None
    return {int(k): float(v) for k, v in sorted(mapping.items(), key=lambda kv: int(kv[0]))}


@register_step
class QualityFilter(Step):
    """Drop documents that fail a Gopher/C4 heuristic; the reason names the first failing rule.

    Thresholds are Gopher's (Rae et al. 2021, appendix A, table A1); ``None`` disables a rule.
    The C4 options (off by default) flag documents C4 would have dropped or gutted: any
    "lorem ipsum", any ``{`` (code), lines mentioning JavaScript or cookie/policy notices
    (C4 removes such *lines*; a selector cannot edit text, so here the document goes), and
    fewer than ``c4_min_sentences`` sentences (C4 used 5).
    """

    name = "quality"
    row_local = True  # each rule reads one document

    def __init__(
        self,
        *,
        min_words: int | None = 50,
        max_words: int | None = 100_000,
        min_mean_word_length: float | None = 3,
        max_mean_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_line_ratio: float | None = 0.9,
        max_ellipsis_line_ratio: float | None = 0.3,
        min_alpha_word_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        max_duplicate_line_fraction: float | None = 0.3,
        max_duplicate_paragraph_fraction: float | None = 0.3,
        max_duplicate_line_char_fraction: float | None = 0.2,
        max_duplicate_paragraph_char_fraction: float | None = 0.2,
        max_top_ngram_char_fraction: Mapping[int, float] | None = None,
        max_dup_ngram_char_fraction: Mapping[int, float] | None = None,
        c4_lorem_ipsum: bool = False,
        c4_curly_brace: bool = False,
        c4_javascript: bool = False,
        c4_policy: bool = False,
        c4_min_sentences: int | None = None,
    ) -> None:
        self.min_words = min_words
        self.max_words = max_words
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_line_ratio = max_bullet_line_ratio
        self.max_ellipsis_line_ratio = max_ellipsis_line_ratio
        self.min_alpha_word_ratio = min_alpha_word_ratio
        self.min_stop_words = min_stop_words
        self.max_duplicate_line_fraction = max_duplicate_line_fraction
        self.max_duplicate_paragraph_fraction = max_duplicate_paragraph_fraction
        self.max_duplicate_line_char_fraction = max_duplicate_line_char_fraction
        self.max_duplicate_paragraph_char_fraction = max_duplicate_paragraph_char_fraction
        # The paper's tables are the defaults; ``{}`` or ``None`` switches a family off. A
        # mutable default argument would be shared between instances, hence this dance.
        self.max_top_ngram_char_fraction = _int_keyed(
            GOPHER_TOP_NGRAM if max_top_ngram_char_fraction is None else max_top_ngram_char_fraction
        )
        self.max_dup_ngram_char_fraction = _int_keyed(
            GOPHER_DUP_NGRAM if max_dup_ngram_char_fraction is None else max_dup_ngram_char_fraction
        )
        self.c4_lorem_ipsum = c4_lorem_ipsum
        self.c4_curly_brace = c4_curly_brace
        self.c4_javascript = c4_javascript
        self.c4_policy = c4_policy
        self.c4_min_sentences = c4_min_sentences
        self._rules = self._build_rules()
        self._kinds = {r.name: f"quality:{r.name}" for r in self._rules}

    def _build_rules(self) -> list[_Rule]:
        """The active rules, in evaluation order (cheap before dear)."""
        spec: list[tuple[str, str, float | None, str]] = [
            ("min_words", "n_words", self.min_words, "min"),
            ("max_words", "n_words", self.max_words, "max"),
            ("min_mean_word_length", "mean_word_length", self.min_mean_word_length, "min"),
            ("max_mean_word_length", "mean_word_length", self.max_mean_word_length, "max"),
            ("max_symbol_word_ratio", "symbol_word_ratio", self.max_symbol_word_ratio, "max"),
            ("min_alpha_word_ratio", "alpha_word_ratio", self.min_alpha_word_ratio, "min"),
            ("min_stop_words", "stop_words", self.min_stop_words, "min"),
            ("max_bullet_line_ratio", "bullet_line_ratio", self.max_bullet_line_ratio, "max"),
            ("max_ellipsis_line_ratio", "ellipsis_line_ratio", self.max_ellipsis_line_ratio, "max"),
            ("max_duplicate_line_fraction", "duplicate_line_fraction",
             self.max_duplicate_line_fraction, "max"),
            ("max_duplicate_paragraph_fraction", "duplicate_paragraph_fraction",
             self.max_duplicate_paragraph_fraction, "max"),
            ("max_duplicate_line_char_fraction", "duplicate_line_char_fraction",
             self.max_duplicate_line_char_fraction, "max"),
            ("max_duplicate_paragraph_char_fraction", "duplicate_paragraph_char_fraction",
             self.max_duplicate_paragraph_char_fraction, "max"),
        ]
        for n, limit in (self.max_top_ngram_char_fraction or {}).items():
            spec.append((f"max_top_{n}gram_char_fraction", f"top_{n}gram_char_fraction", limit,
                         "max"))
        for n, limit in (self.max_dup_ngram_char_fraction or {}).items():
            spec.append((f"max_dup_{n}gram_char_fraction", f"dup_{n}gram_char_fraction", limit,
                         "max"))
        # C4 flags: a count above zero fails ("max" with limit 0).
        spec += [
            ("c4_lorem_ipsum", "has_lorem_ipsum", 0 if self.c4_lorem_ipsum else None, "max"),
            ("c4_curly_brace", "has_curly_brace", 0 if self.c4_curly_brace else None, "max"),
            ("c4_javascript", "javascript_lines", 0 if self.c4_javascript else None, "max"),
            ("c4_policy", "policy_lines", 0 if self.c4_policy else None, "max"),
            ("c4_min_sentences", "n_sentences", self.c4_min_sentences, "min"),
        ]
        return [_Rule(name, feat, float(limit), d) for name, feat, limit, d in spec
                if limit is not None]

    @property
    def rule_names(self) -> list[str]:
        """Active rules in evaluation order (the ``<rule>`` of ``quality:<rule>``)."""
        return [r.name for r in self._rules]

    def check(self, text: str) -> tuple[str, float] | None:
        """The first rule ``text`` fails and the measured value, or ``None`` if it passes."""
        doc = _Doc(text, (self.max_top_ngram_char_fraction or {}).keys(),
                   (self.max_dup_ngram_char_fraction or {}).keys())
        for rule in self._rules:
            value = doc.get(rule.feature)
            if rule.fails(value):
                return rule.name, value
        return None

    def first_failures(
        self, features: np.ndarray, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each row of a feature matrix: the index (in :attr:`rule_names`) of the first rule
        it fails, or -1, and the failing value.

        The per-row reduce of the step, vectorised over rows: rule by rule in evaluation order,
        a row takes the first rule it fails (``check`` on each text gives the same answer).
        """
        col = {name: i for i, name in enumerate(names)}
        failed = np.full(len(features), -1, np.int64)
        values = np.zeros(len(features), np.float64)
        for r, rule in enumerate(self._rules):
            v = features[:, col[rule.feature]]
            bad = v < rule.limit if rule.direction == "min" else v > rule.limit
            new = bad & (failed < 0)
            failed[new] = r
            values[new] = v[new]
        return failed, values

    def _feature_choice(self) -> tuple[list[int], list[int], bool]:
        """The n-gram sizes and whether C4 features are needed: only what the rules read."""
        top_ns = list((self.max_top_ngram_char_fraction or {}).keys())
        dup_ns = list((self.max_dup_ngram_char_fraction or {}).keys())
        return top_ns, dup_ns, any(r.feature in _C4_FEATURES for r in self._rules)

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        n = len(ds)
        top_ns, dup_ns, c4 = self._feature_choice()
        names = quality_feature_names(top_ns, dup_ns, c4)
        failed = np.full(n, -1, np.int64)
        values = np.zeros(n, np.float64)
        row = 0
        batch_size = max(ctx.batch_size, KERNEL_BATCH)
        for batch in ctx.iter_text_arrays(ds, desc="quality", batch_size=batch_size):
            features = quality_feature_matrix(batch, top_ngrams=top_ns, dup_ngrams=dup_ns, c4=c4)
            end = row + len(batch)
            failed[row:end], values[row:end] = self.first_failures(features, names)
            row = end
        return self._selection(failed, values)

    def row_features(self, texts: Texts) -> dict[str, np.ndarray]:
        """The map half: the feature matrix of the features the rules read (one row a text)."""
        top_ns, dup_ns, c4 = self._feature_choice()
        return {"features": quality_feature_matrix(texts, top_ngrams=top_ns, dup_ngrams=dup_ns,
                                                   c4=c4)}

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, np.ndarray]) -> Selection:
        """The reduce half, row by row: each row's first failed rule (:meth:`first_failures`)."""
        top_ns, dup_ns, c4 = self._feature_choice()
        failed, values = self.first_failures(features["features"],
                                             quality_feature_names(top_ns, dup_ns, c4))
        return self._selection(failed, values)

    def _selection(self, failed: np.ndarray, values: np.ndarray) -> Selection:
        """Rows failing a rule removed as ``quality:<rule>`` with the measured value."""
        n = len(failed)
        # Indexed by rule; the trailing "" is what a kept row's -1 picks.
        kind_of_rule = np.array([self._kinds[r.name] for r in self._rules] + [""], dtype=object)
        kinds = kind_of_rule[failed]
        detail = np.full(n, "", dtype=object)
        for i in np.flatnonzero(failed >= 0).tolist():
            detail[i] = _fmt(float(values[i]))
        counts = np.bincount(failed[failed >= 0], minlength=len(self._rules))
        keep = failed < 0
        stats = {
            "rules": self.rule_names,
            "removed_by_rule": {
                name: int(c) for name, c in zip(self.rule_names, counts, strict=True)
            },
            "kept": int(keep.sum()),
            "removed": int(n - keep.sum()),
        }
        return Selection.from_mask(keep, kinds, detail=detail, stats=stats)


def _fmt(value: float) -> str:
    if math.isinf(value) or value != int(value):
        return f"{value:.4g}"
    return str(int(value))
