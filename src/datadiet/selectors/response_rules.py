"""Cheap rules on a fine-tuning row's response: echoes of the prompt, non-answers, cut-off text.

Why rules before models: three of the commonest faults of instruction data can be seen without a
model, for free, and a model-based score does not see them well — a generic "I'm not sure, could
you give more details?" is *likely* text (low loss, so perplexity and IFD like it), and an echo
of the prompt is perfectly predicted given the prompt. Each rule is a pure function of one row,
so the step is row-local (any shard decides alone) and costs no model FLOPs.

Rules (``checks``; each removed row gets the reason of the first rule it fails):

* ``restates``: the response mostly repeats the instruction — at least ``restate_containment``
  of its word trigrams occur in the instruction *and* it covers at least ``restate_coverage`` of
  the instruction's trigrams. The second test spares extractive answers (a span copied from a
  passage covers little of the prompt) and short answers (fewer than 3 trigrams are never judged).
* ``generic``: a short response (at most ``generic_max_words`` words) that matches a non-answer
  pattern: uncertainty ("I'm not sure", "I don't know"), refusal ("I cannot help/assist"),
  "as an AI", a request for more details or clarification, or "it depends"/"many possible
  answers"/"no single answer". ``patterns`` adds regular expressions of your own.
* ``truncated``: a response of at least ``truncation_min_words`` words whose last character
  does not end a sentence (``.!?`` or a closing quote/bracket after one, a digit, ``%``,
  ``*`` or ``:`` in a list); short labels ("yes", "positive") are never judged.

For a chat row every assistant turn is checked against the user turn before it; the row fails
if any turn does. Special markers such as ``<|endoftext|>`` are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["CHECKS", "GENERIC_PATTERNS", "ResponseRules", "check_pair"]

CHECKS = ("restates", "generic", "truncated")
#: Non-answer families (case-insensitive); written from what assistants and crowd workers say
#: when they do not answer, not from any one data set.
GENERIC_PATTERNS = (
    r"\b(i'?m|i am) (not (sure|certain)|unsure)\b",
    r"\bi (do not|don'?t) know\b",
    r"\b(can'?t|cannot|unable to|won'?t) (help|assist|answer|provide|comply)\b",
    r"\bas an ai\b",
    r"\b(provide|give|share|need|have) (me )?(more|additional|further) "
    r"(details|information|context)\b",
    r"\b(please )?clarify\b",
    r"\bit depends\b",
    r"\bmany (possible )?(answers|possibilities|factors|ways)\b",
    r"\bno (single|one) (correct |right )?answer\b",
)
_GENERIC = tuple(re.compile(p, re.IGNORECASE) for p in GENERIC_PATTERNS)
_MARKER = re.compile(r"<\|[^|]*\|>")
_WORD = re.compile(r"\w+")
_ENDS_SENTENCE = re.compile(r"([.!?…]['\"”’)\]]*|[\d%*:;)\]}\"”]|```)$")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _trigrams(words: Sequence[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def check_pair(prompt: str, response: str, *, checks: Sequence[str] = CHECKS,
               restate_containment: float = 0.8, restate_coverage: float = 0.5,
               generic_max_words: int = 30, truncation_min_words: int = 12,
               generic: Sequence[re.Pattern] = _GENERIC) -> str | None:
    """The first rule of ``checks`` that one (instruction, response) pair fails, or ``None``."""
    response = _MARKER.sub("", response).strip()
    words = _words(response)
    for check in checks:
        if check == "restates":
            ours = _trigrams(words)
            if len(ours) >= 3:
                theirs = _trigrams(_words(prompt))
                shared = len(ours & theirs)
                if theirs and shared >= restate_containment * len(ours) \
                        and shared >= restate_coverage * len(theirs):
                    return "restates"
        elif check == "generic":
            if len(words) <= generic_max_words and any(p.search(response) for p in generic):
                return "generic"
        elif check == "truncated":
            if len(words) >= truncation_min_words and not _ENDS_SENTENCE.search(response):
                return "truncated"
    return None


@register_step
class ResponseRules(Step):
    """Remove rows whose response restates the instruction, is a non-answer, or is cut off.

    Args:
        checks: which rules run, in order (``restates``, ``generic``, ``truncated``).
        restate_containment: share of the response's word trigrams found in the instruction.
        restate_coverage: share of the instruction's word trigrams the response repeats.
        generic_max_words: longer responses are never called generic (a real answer may hedge).
        truncation_min_words: shorter responses are never called truncated (labels, names).
        patterns: extra non-answer regular expressions (case-insensitive) for ``generic``.

    Removed rows: ``response_rules:restates``, ``response_rules:generic``,
    ``response_rules:truncated``. No scores; no model.
    """

    name = "response_rules"
    row_local = True
    needs_instruction_data = True

    def __init__(
        self,
        *,
        checks: Sequence[str] = CHECKS,
        restate_containment: float = 0.8,
        restate_coverage: float = 0.5,
        generic_max_words: int = 30,
        truncation_min_words: int = 12,
        patterns: Sequence[str] = (),
    ) -> None:
        unknown = [c for c in checks if c not in CHECKS]
        if isinstance(checks, str) or unknown or not checks:
            raise ValueError(f"checks must be a non-empty list of {', '.join(CHECKS)}; "
                             f"got {checks!r}")
        for name, value in (("restate_containment", restate_containment),
                            ("restate_coverage", restate_coverage)):
            if not isinstance(value, int | float) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for name, value in (("generic_max_words", generic_max_words),
                            ("truncation_min_words", truncation_min_words)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        try:
            self._generic = [*_GENERIC, *(re.compile(p, re.IGNORECASE) for p in patterns)]
        except re.error as exc:
            raise ValueError(f"patterns: not a regular expression ({exc})") from exc
        self.checks = list(checks)
        self.restate_containment = float(restate_containment)
        self.restate_coverage = float(restate_coverage)
        self.generic_max_words = generic_max_words
        self.truncation_min_words = truncation_min_words
        self.patterns = list(patterns)

    def check_row(self, pairs: Sequence[tuple[str, str]]) -> str | None:
        """The first failed rule over a row's (prompt, response) turns, or ``None``."""
        for prompt, response in pairs:
            failed = check_pair(prompt, response, checks=self.checks,
                                restate_containment=self.restate_containment,
                                restate_coverage=self.restate_coverage,
                                generic_max_words=self.generic_max_words,
                                truncation_min_words=self.truncation_min_words,
                                generic=self._generic)
            if failed:
                return failed
        return None

    def map_columns(self, view: RecordView, columns: list[str]) -> list[str]:
        return view.turn_columns(columns, self.name)

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's first failed rule, as its place in ``checks`` plus one (0: none)."""
        codes = {check: i + 1 for i, check in enumerate(self.checks)}
        failed = [self.check_row(pairs) for pairs in view.turns(batch, self.name)]
        return {"failed": np.array([codes[f] if f else 0 for f in failed], dtype=np.int8)}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        failed = np.asarray(features["failed"], dtype=np.int64)
        if len(failed) == 0:
            return Selection.keep_all(0)
        labels = np.array(["", *(f"{self.name}:{c}" for c in self.checks)], dtype=object)
        reasons = labels[failed]
        stats = {check: int(np.count_nonzero(failed == i + 1))
                 for i, check in enumerate(self.checks)}
        return Selection.from_mask(failed == 0, reasons, stats=stats)
