"""What every compression method shares: the call's options, the prepared prompt (the job
record), the plan a method returns, and the working text (the kept passages joined) with the
spans that must survive.

Why this split: methods differ only in *how they rank* passages and units. Preparing the prompt,
cutting it into passages, protecting spans, meeting the budget exactly and reporting what was
kept are the same for all of them, so they live here and in ``budget.py``, and each method stays
a ranking function.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from datadiet.prompting.compression.budget import TokenCounter
from datadiet.prompting.compression.protect import PatternLike, find_spans, overlapping
from datadiet.prompting.compression.segments import passages as cut_passages
from datadiet.prompting.compression.units import Units, tokenize_units

PROTECT_SCOPES = ("everywhere", "kept_passages")


@dataclass(frozen=True)
class CompressOptions:
    """How one call compresses, the same for every prompt of the call and every method.

    rate: keep this fraction of the tokens (``target_tokens``, per prompt, wins).
    protect: regexes or presets (``numbers``, ``json_keys``, ``code``, ``urls``) whose matches
        survive verbatim; ``None`` protects numbers, ``[]`` nothing.
    target_tokenizer: count tokens as this tokenizer does (a tiktoken name such as
        ``"cl100k_base"``, a Hugging Face tokenizer or folder, a callable); default: the
        scoring model's.
    separator: joins list segments (and the instruction and question) into one prompt.
    split: how the context is cut into passages for the coarse level: ``"auto"`` (a string into
        blank-line paragraphs, and a paragraph longer than ``long_passage_tokens`` into
        sentences; list items as given), ``"sentences"`` (long list items too), ``"paragraphs"``
        or ``"none"`` (a string is one passage).
    long_passage_tokens: the length above which a paragraph is cut into sentences.
    protect_scope: ``"everywhere"``: every protected span survives (a passage that carries one
        is never dropped by the coarse level); ``"kept_passages"``: the coarse level may drop
        such a passage whole, and protected spans survive in every passage it keeps (for
        demonstrations: drop one, or keep its label).
    keep_question / keep_separators: the question, and the gaps between kept passages, survive.
    keep_segments: indices of segments (list items; paragraphs of a string) the coarse level
        must not drop.
    progress: a progress bar on stderr (``None``: only for prompts of more than 8K tokens).
    """

    rate: float | None = None
    protect: Iterable[PatternLike] | PatternLike | None = None
    protect_scope: str = "everywhere"
    target_tokenizer: Any = None
    separator: str = "\n\n"
    split: str = "auto"
    long_passage_tokens: int = 64
    keep_question: bool = True
    keep_separators: bool = True
    keep_segments: frozenset[int] = frozenset()
    progress: bool | None = None

    @classmethod
    def split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[CompressOptions, dict[str, Any]]:
        """Separate call options from a method's own options (e.g. ``window``) in ``kwargs``."""
        names = {f.name for f in fields(cls)}
        mine = {k: v for k, v in kwargs.items() if k in names}
        if mine.get("keep_segments") is not None:
            mine["keep_segments"] = frozenset(int(i) for i in mine["keep_segments"])
        else:
            mine.pop("keep_segments", None)
        return cls(**mine), {k: v for k, v in kwargs.items() if k not in names}


@dataclass(frozen=True)
class Part:
    """A range of the prompt: the instruction, a passage of the context, or the question.

    ``segment`` is, for a passage, the user's segment it belongs to (list item or paragraph).
    """

    kind: str
    start: int
    end: int
    segment: int = -1


@dataclass
class Job:
    """One prompt, prepared: its text, its parts, what must survive, and its token target."""

    original: str
    segments: list[str]
    instruction: str
    question: str
    # instruction, passages, question, in order
    parts: list[Part]
    passages: list[Part]
    # per passage: does it carry a protected span (then the coarse level cannot drop it)
    protected_passage: np.ndarray
    # protected ranges of ``original`` (merged, sorted)
    protected: list[tuple[int, int]]
    # passages the coarse level must keep: pinned segments (and protected passages, with
    # protect_scope="everywhere")
    forced: frozenset[int]
    options: CompressOptions
    counter: TokenCounter
    origin_tokens: int = 0
    target: int = 0

    @property
    def fixed_parts(self) -> list[str]:
        return [p for p in (self.instruction, self.question) if p]

    @property
    def passage_index(self) -> dict[int, int]:
        """Index in ``parts`` of a passage -> its index among the passages."""
        offset = next((k for k, p in enumerate(self.parts) if p.kind == "passage"), 0)
        return {offset + i: i for i in range(len(self.passages))}

    def passage_text(self, i: int) -> str:
        p = self.passages[i]
        return self.original[p.start : p.end]


def build_job(
    prompt: str | Sequence[str],
    *,
    question: str | None,
    instruction: str | None,
    options: CompressOptions,
    patterns: Sequence[re.Pattern],
    counter: TokenCounter,
) -> Job:
    """Lay the prompt out (instruction, context, question joined by the separator, the layout
    llmlingua uses, so origin token counts are comparable) and cut the context into passages."""
    from_string = isinstance(prompt, str)
    segments = [prompt] if from_string else list(prompt)
    if not all(isinstance(s, str) for s in segments):
        raise TypeError("prompt must be a string or a list of strings (segments)")
    sep = options.separator
    chunks: list[str] = []
    pos = 0

    def put(text: str) -> tuple[int, int]:
        nonlocal pos
        if chunks:
            chunks.append(sep)
            pos += len(sep)
        chunks.append(text)
        pos += len(text)
        return pos - len(text), pos

    head = [Part("instruction", *put(instruction))] if instruction else []
    seg_ranges = [put(s) for s in segments]
    tail = [Part("question", *put(question))] if question else []
    original = "".join(chunks)
    # matched per part, so a pattern never spans two segments
    ranges = [*seg_ranges, *((p.start, p.end) for p in tail)]
    protected = [(s + a, s + b) for s, e in ranges for a, b in find_spans(original[s:e], patterns)]
    cut = cut_passages(
        original, seg_ranges, split=options.split, from_string=from_string,
        long_tokens=options.long_passage_tokens, count=counter, protected=protected,
    )
    passage_parts = [Part("passage", s, e, seg) for s, e, seg in cut]
    carries = np.asarray([bool(overlapping(protected, p.start, p.end)) for p in passage_parts],
                         dtype=bool)
    if options.protect_scope not in PROTECT_SCOPES:
        raise ValueError(f"protect_scope must be one of {', '.join(PROTECT_SCOPES)}, "
                         f"not {options.protect_scope!r}")
    pinned = {i for i, p in enumerate(passage_parts) if p.segment in options.keep_segments}
    if options.protect_scope == "everywhere":
        pinned |= {int(i) for i in np.flatnonzero(carries)}
    return Job(
        original=original, segments=segments, instruction=instruction or "",
        question=question or "", parts=[*head, *passage_parts, *tail], passages=passage_parts,
        protected_passage=carries, protected=protected,
        forced=frozenset(pinned),
        options=options, counter=counter,
    )


@dataclass
class Plan:
    """A method's decision for one job, before the exact budget fit."""

    kept_passages: list[int]
    units: Units
    keep: np.ndarray
    priority: np.ndarray
    # pieces of the working text: (work_start, work_end, original_start)
    pieces: list[tuple[int, int, int]]
    info: dict = field(default_factory=dict)


@dataclass
class Working:
    """The kept passages (plus instruction and question) joined, tokenised into units."""

    units: Units
    pieces: list[tuple[int, int, int]]
    # unit index where the question starts (units from there on are not scored); len(units) if none
    tail_unit: int
    # per unit: index of the passage it belongs to, -1 for instruction/question/gaps
    unit_passage: np.ndarray


def _gap(job: Job, a: int, b: int) -> tuple[int, int]:
    """The gap to put between parts ``a`` and ``b`` (indices into ``job.parts``, a < b) when
    the parts between them are dropped: the strongest original gap between them -- a paragraph
    break beats a sentence break, so dropping the end of one paragraph and the start of the next
    does not glue two paragraphs into one line."""
    parts = job.parts
    best, best_key = (parts[a].end, parts[a + 1].start), (-1, -1)
    for k in range(a, b):
        s, e = parts[k].end, parts[k + 1].start
        key = (job.original.count("\n", s, e), e - s)
        if key > best_key:
            best, best_key = (s, e), key
    return best


def joined_text(job: Job, kept_passages: Iterable[int]) -> str:
    """The text :func:`working_text` would build for these passages, without tokenising it
    (what the coarse level counts to know whether its selection covers the budget)."""
    kept, index = set(kept_passages), job.passage_index
    layout = [k for k, part in enumerate(job.parts)
              if part.kind != "passage" or index[k] in kept]
    chunks: list[str] = []
    for n, k in enumerate(layout):
        if n:
            gs, ge = _gap(job, layout[n - 1], k)
            chunks.append(job.original[gs:ge])
        chunks.append(job.original[job.parts[k].start : job.parts[k].end])
    return "".join(chunks)


def working_text(job: Job, kept_passages: Iterable[int], tokenizer: object) -> Working:
    """Join the instruction, the kept passages and the question; mark what must survive.

    Mandatory: the instruction; the question (``keep_question``); the gaps between parts
    (``keep_separators``: demonstrations stay visibly separate); and every protected span.
    """
    kept, index = set(kept_passages), job.passage_index
    layout = [k for k, part in enumerate(job.parts)  # indices into job.parts
              if part.kind != "passage" or index[k] in kept]
    passage_of = {k: index[k] for k in layout if k in index}
    opt = job.options
    chunks: list[str] = []
    pieces: list[tuple[int, int, int]] = []
    mandatory: list[tuple[int, int]] = []
    ranges: list[tuple[int, int, int]] = []  # (part index, work start, work end)
    pos = 0
    for n, k in enumerate(layout):
        if n:
            gs, ge = _gap(job, layout[n - 1], k)
            pieces.append((pos, pos + ge - gs, gs))
            if opt.keep_separators:
                mandatory.append((pos, pos + ge - gs))
            chunks.append(job.original[gs:ge])
            pos += ge - gs
        part = job.parts[k]
        text = job.original[part.start : part.end]
        pieces.append((pos, pos + len(text), part.start))
        ranges.append((k, pos, pos + len(text)))
        if part.kind == "instruction" or (part.kind == "question" and opt.keep_question):
            mandatory.append((pos, pos + len(text)))
        chunks.append(text)
        pos += len(text)
    mandatory += _protected_in_work(job, pieces)
    text = "".join(chunks)
    units = tokenize_units(tokenizer, text, mandatory)
    unit_passage = np.full(len(units), -1, dtype=np.int64)
    tail_unit = len(units)
    for k, s, e in ranges:
        lo = int(np.searchsorted(units.ends, s, side="right"))
        hi = int(np.searchsorted(units.starts, e, side="left"))
        if k in passage_of:
            unit_passage[lo:hi] = passage_of[k]
        elif job.parts[k].kind == "question" and opt.keep_question:
            tail_unit = min(tail_unit, lo)
    return Working(units, pieces, tail_unit, unit_passage)


def _protected_in_work(job: Job, pieces: Sequence[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The protected ranges of the original, moved to working-text coordinates."""
    if not job.protected:
        return []
    starts = np.asarray([a for a, _ in job.protected])
    out = []
    for ws, we, os_ in pieces:
        oe = os_ + (we - ws)
        k = max(0, int(np.searchsorted(starts, os_, side="right")) - 1)
        while k < len(job.protected) and job.protected[k][0] < oe:
            a, b = max(job.protected[k][0], os_), min(job.protected[k][1], oe)
            if a < b:
                out.append((ws + a - os_, ws + b - os_))
            k += 1
    return out


def map_spans(spans: Sequence[tuple[int, int]], pieces: Sequence[tuple[int, int, int]]
              ) -> list[tuple[int, int]]:
    """Map character ranges of the working text back to the original prompt."""
    out: list[tuple[int, int]] = []
    starts = np.asarray([ws for ws, _, _ in pieces])
    for s, e in spans:
        k = max(0, int(np.searchsorted(starts, s, side="right")) - 1)
        while k < len(pieces) and pieces[k][0] < e:
            ws, we, os_ = pieces[k]
            a, b = max(s, ws), min(e, we)
            if a < b:
                span = (os_ + a - ws, os_ + b - ws)
                if out and out[-1][1] == span[0]:
                    out[-1] = (out[-1][0], span[1])
                else:
                    out.append(span)
            k += 1
    return out
