"""What every compression method shares: the prepared prompt, the plan a method returns, and
the working text (the kept segments joined) with its mandatory spans.

Why this split: methods differ only in *how they rank* segments and units. Preparing the prompt,
protecting spans, meeting the budget exactly and reporting what was kept are the same for all of
them, so they live here and in ``budget.py`` and each method stays a ranking function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from datadiet.prompting.compression.budget import TokenCounter
from datadiet.prompting.compression.protect import find_spans
from datadiet.prompting.compression.units import Units, tokenize_units


@dataclass
class Job:
    """One prompt, prepared: its parts, what must survive, and its token target."""

    segments: list[str]
    instruction: str
    question: str
    separator: str
    patterns: list[re.Pattern]
    keep_question: bool
    keep_separators: bool
    keep_segments: frozenset[int]
    counter: TokenCounter
    original: str = ""
    origin_tokens: int = 0
    target: int = 0
    # (kind, index, start, end) of each part in ``original``; kind: instruction/segment/question
    parts: list[tuple[str, int, int, int]] = field(default_factory=list)

    @property
    def fixed_parts(self) -> list[str]:
        return [p for p in (self.instruction, self.question) if p]


@dataclass
class Plan:
    """A method's decision for one job, before the exact budget fit."""

    kept_segments: list[int]
    units: Units
    keep: np.ndarray
    priority: np.ndarray
    # pieces of the working text: (work_start, work_end, original_start)
    pieces: list[tuple[int, int, int]]
    info: dict = field(default_factory=dict)


def assemble(job: Job) -> None:
    """Fill ``job.original`` and ``job.parts``: instruction, segments, question joined by the
    separator (the layout llmlingua uses, so origin token counts are comparable)."""
    items: list[tuple[str, int, str]] = []
    if job.instruction:
        items.append(("instruction", 0, job.instruction))
    items += [("segment", i, s) for i, s in enumerate(job.segments)]
    if job.question:
        items.append(("question", 0, job.question))
    pos, parts, chunks = 0, [], []
    for n, (kind, idx, text) in enumerate(items):
        if n:
            chunks.append(job.separator)
            pos += len(job.separator)
        parts.append((kind, idx, pos, pos + len(text)))
        chunks.append(text)
        pos += len(text)
    job.original = "".join(chunks)
    job.parts = parts


@dataclass
class Working:
    """The kept segments (plus instruction and question) joined, tokenised into units."""

    units: Units
    pieces: list[tuple[int, int, int]]
    # unit index where the question starts (units from there on are not scored); len(units) if none
    tail_unit: int
    # per unit: index of the segment it belongs to, -1 for instruction/question/separators
    unit_segment: np.ndarray


def working_text(job: Job, kept_segments: Sequence[int], tokenizer: object) -> Working:
    """Join the instruction, the kept segments and the question; mark what must survive.

    Mandatory: the instruction; the question (``keep_question``); separators between parts
    (``keep_separators``: demonstrations stay visibly separate); and every protected-pattern match
    inside a part (matched per part, so a pattern never spans two segments).
    """
    kept = sorted(set(kept_segments))
    layout: list[tuple[str, int, int, int]] = []  # kind, index, original start, original end
    for kind, idx, s, e in job.parts:
        if kind != "segment" or idx in kept:
            layout.append((kind, idx, s, e))
    chunks: list[str] = []
    pieces: list[tuple[int, int, int]] = []
    mandatory: list[tuple[int, int]] = []
    part_ranges: list[tuple[str, int, int, int]] = []
    pos = 0
    for n, (kind, idx, s, e) in enumerate(layout):
        if n:
            sep = job.separator
            # the separator that followed the previous part in the original
            prev_end = layout[n - 1][3]
            pieces.append((pos, pos + len(sep), prev_end))
            if job.keep_separators:
                mandatory.append((pos, pos + len(sep)))
            chunks.append(sep)
            pos += len(sep)
        text = job.original[s:e]
        pieces.append((pos, pos + len(text), s))
        part_ranges.append((kind, idx, pos, pos + len(text)))
        if kind == "instruction" or (kind == "question" and job.keep_question):
            mandatory.append((pos, pos + len(text)))
        else:
            mandatory += [(pos + a, pos + b) for a, b in find_spans(text, job.patterns)]
        chunks.append(text)
        pos += len(text)
    text = "".join(chunks)
    units = tokenize_units(tokenizer, text, mandatory)
    unit_segment = np.full(len(units), -1, dtype=np.int64)
    tail_unit = len(units)
    for kind, idx, s, e in part_ranges:
        lo = int(np.searchsorted(units.ends, s, side="right"))
        hi = int(np.searchsorted(units.starts, e, side="left"))
        if kind == "segment":
            unit_segment[lo:hi] = idx
        elif kind == "question" and job.keep_question:
            tail_unit = min(tail_unit, lo)
    return Working(units, pieces, tail_unit, unit_segment)


def map_spans(spans: Sequence[tuple[int, int]], pieces: Sequence[tuple[int, int, int]]
              ) -> list[tuple[int, int]]:
    """Map character ranges of the working text back to the original prompt."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        for ws, we, os_ in pieces:
            a, b = max(s, ws), min(e, we)
            if a < b:
                span = (os_ + a - ws, os_ + b - ws)
                if out and out[-1][1] == span[0]:
                    out[-1] = (out[-1][0], span[1])
                else:
                    out.append(span)
    return out
