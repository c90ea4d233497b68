"""Text normalisation and word splitting shared by every selector.

One definition of "the same text" and "a word" for the whole package: exact dedup, MinHash
shingles, quality heuristics and DSIR features all agree on what a word is, so their results
can be compared and explained together.
"""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Canonical form for equality tests: NFKC, case-folded, punctuation dropped, one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PUNCT.sub(" ", text)
    return _WS.sub(" ", text).strip()


def words(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters, digits and underscore)."""
    return _WORD.findall(text.lower())


def raw_words(text: str) -> list[str]:
    """Whitespace-separated tokens as written (the unit of Gopher's word-level rules)."""
    return text.split()
