"""Cutting a prompt into the passages the coarse level ranks: the way a user means the text.

Why this matters: question-aware compression ranks pieces of the context against the question
and keeps the best whole pieces before any token is dropped. If a string prompt is one piece,
there is nothing to rank, and a fact the question asks about is judged token by token, by
surprisal alone, like every other sentence -- it survives no more often than random dropping
would keep it. So a string is cut the way a reader sees it: blank-line paragraphs, and a long
paragraph into its sentences. A list of segments is taken as the user's own cut (demonstrations,
retrieved documents), and is only cut further when asked (``split="sentences"``).

Protected spans are never cut: a boundary inside a protected match (a fenced code block with
blank lines in it, say) is removed, so a passage either carries a whole protected span or none
of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from datadiet.prompting.compression.protect import overlapping

SPLITS = ("auto", "sentences", "paragraphs", "none")

# a blank line: a newline, optional spaces, another newline (and any whitespace after it)
_PARAGRAPH_GAP = re.compile(r"\n[ \t]*\n\s*")
# the end of a sentence: terminal punctuation (and closing quotes/brackets), whitespace, then
# something that starts a sentence; or a single line break
_SENTENCE_GAP = re.compile(r"(?<=[.!?])[\"')\]]*[ \t]+(?=[\"'(\[]?[A-Z0-9])|[ \t]*\n\s*")


def paragraph_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Blank-line separated blocks of ``text[start:end]``, without their surrounding whitespace."""
    return _pieces(text, start, len(text) if end is None else end, _PARAGRAPH_GAP)


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentences (or lines) of ``text[start:end]``, without their surrounding whitespace.

    A heuristic, on purpose (no model, linear time): a sentence ends at ``.``, ``!`` or ``?``
    followed by whitespace and a capital letter, digit or opening quote, or at a line break.
    "H. americanus" stays whole; "e.g. The" is cut, which costs little: the coarse level may then
    keep or drop the two halves separately.
    """
    return _pieces(text, start, len(text) if end is None else end, _SENTENCE_GAP)


def _pieces(text: str, start: int, end: int, gap: re.Pattern) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = start
    for m in gap.finditer(text, start, end):
        out.append((pos, m.start()))
        pos = m.end()
    out.append((pos, end))
    return [_strip(text, s, e) for s, e in out if text[s:e].strip()]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def merge_across(spans: list[tuple[int, int]], protected: Sequence[tuple[int, int]]
                 ) -> list[tuple[int, int]]:
    """Join neighbouring spans whose gap falls inside a protected range (never cut one)."""
    if not protected or len(spans) < 2:
        return spans
    out = [spans[0]]
    for s, e in spans[1:]:
        gap_start, gap_end = out[-1][1], s
        if overlapping(protected, gap_start, gap_end):
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def passages(
    text: str,
    segments: Sequence[tuple[int, int]],
    *,
    split: str,
    from_string: bool,
    long_tokens: int,
    count: Callable[[str], int],
    protected: Sequence[tuple[int, int]] = (),
) -> list[tuple[int, int, int]]:
    """The passages of a context: ``(start, end, segment)`` ranges of ``text``, in order.

    ``segments`` are the user's segments (list items, or the whole string) as ranges of
    ``text``. ``split``: ``"auto"`` cuts a string into paragraphs and a paragraph of more than
    ``long_tokens`` tokens into sentences, and keeps list items whole; ``"sentences"`` does the
    same to list items too; ``"paragraphs"`` stops at paragraphs; ``"none"`` keeps every segment
    whole. For a string, ``segment`` is the paragraph's index (what ``kept_segments`` reports);
    for a list, the item's.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    out: list[tuple[int, int, int]] = []
    if from_string and split != "none":
        (s0, e0), = segments
        paragraphs = merge_across(paragraph_spans(text, s0, e0), protected)
        for p, (s, e) in enumerate(paragraphs):
            cut = split != "paragraphs" and count(text[s:e]) > long_tokens
            pieces = merge_across(sentence_spans(text, s, e), protected) if cut else [(s, e)]
            out += [(a, b, p) for a, b in pieces]
        return out
    for i, (s, e) in enumerate(segments):
        if split == "sentences" and count(text[s:e]) > long_tokens:
            pieces = merge_across(sentence_spans(text, s, e), protected) or [(s, e)]
            out += [(a, b, i) for a, b in pieces]
        else:
            out.append((s, e, i))
    return out
