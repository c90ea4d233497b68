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
prose". The features are a pure function of one text (:func:`quality_features`), so they map over shards
unchanged; the step itself only loops over ``ctx.iter_texts`` batches.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from datasets import Dataset

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import Step, StepContext, register_step
from datadiet.pipeline.text import words

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

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        n = len(ds)
        kinds = np.full(n, "", dtype=object)
        detail = np.full(n, "", dtype=object)
        counts: Counter[str] = Counter()
        row = 0
        for batch in ctx.iter_texts(ds, desc="quality"):
            for text in batch:
                failed = self.check(text)
                if failed is not None:
                    rule, value = failed
                    kinds[row] = self._kinds[rule]
                    detail[row] = _fmt(value)
                    counts[rule] += 1
                row += 1
        keep = kinds == ""
        stats = {
            "rules": self.rule_names,
            "removed_by_rule": {name: counts.get(name, 0) for name in self.rule_names},
            "kept": int(keep.sum()),
            "removed": int(n - keep.sum()),
        }
        return Selection.from_mask(keep, kinds, detail=detail, stats=stats)


def _fmt(value: float) -> str:
    if math.isinf(value) or value != int(value):
        return f"{value:.4g}"
    return str(int(value))
