"""Protected spans: character ranges that compression must keep verbatim.

Why character ranges and not token ids: a protection is a promise about the *text* the user sees
("42" stays "42", a JSON key stays a key). Tokenisers differ between the scoring model and the
model the prompt is for, so the promise is made in characters and mapped to whichever token
units a method works on (a unit that overlaps a protected range is kept whole).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence

# Named presets users can mix with their own regexes: ``protect=["numbers", r"Answer: \w+"]``.
PRESETS: dict[str, str] = {
    # 3, 3.14, 1,000, 12/60, 10:30, 50% -- a number is only useful whole.
    "numbers": r"\d+(?:[.,:/]\d+)*%?",
    # "key": in JSON -- dropping a key's quote or colon breaks the structure a model must parse.
    "json_keys": r'"[^"\n]{1,100}"\s*:',
    # fenced and inline code: token-level dropping inside code changes its meaning.
    "code": r"```.*?```|`[^`\n]+`",
    "urls": r"https?://\S+",
}

DEFAULT_PROTECT: tuple[str, ...] = ("numbers",)

PatternLike = str | re.Pattern


def compile_patterns(protect: Iterable[PatternLike] | PatternLike | None) -> list[re.Pattern]:
    """Turn ``protect`` (``None`` = the defaults, a preset name, a regex, or a list) into patterns.

    ``None`` means "the defaults" (numbers) because that is what users of compression asked for
    most; an empty list switches protection off explicitly.
    """
    if protect is None:
        protect = DEFAULT_PROTECT
    if isinstance(protect, str | re.Pattern):
        protect = [protect]
    out: list[re.Pattern] = []
    for item in protect:
        if isinstance(item, re.Pattern):
            out.append(item)
        elif item in PRESETS:
            out.append(re.compile(PRESETS[item], re.DOTALL))
        else:
            try:
                out.append(re.compile(item))
            except re.error as exc:
                raise ValueError(f"protect: {item!r} is neither a preset "
                                 f"({', '.join(PRESETS)}) nor a valid regex: {exc}") from exc
    return out


def find_spans(text: str, patterns: Sequence[re.Pattern]) -> list[tuple[int, int]]:
    """All non-empty match ranges of ``patterns`` in ``text``, merged and sorted."""
    spans = [
        (m.start(), m.end()) for p in patterns for m in p.finditer(text) if m.end() > m.start()
    ]
    return merge_spans(spans)


def overlapping(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The ranges of ``spans`` (sorted, non-overlapping) that overlap ``[start, end)``, found by
    bisection so that asking for every passage of a long prompt stays linear."""
    lo = bisect.bisect_right(spans, (start, start))
    if lo and spans[lo - 1][1] > start:
        lo -= 1
    out = []
    for a, b in spans[lo:]:
        if a >= end:
            break
        if b > start and a < end:
            out.append((a, b))
    return out


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping or touching ranges (so callers can test overlap with one bisect)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
