"""argparse types shared by every sub-command, so a bad number is the same exit-2 message everywhere.

Why a module: ``curate``, ``train``, ``generate``, ``compress`` and ``icl-eval`` all take counts,
fractions and non-negative numbers; argparse turns an ``ArgumentTypeError`` into usage + exit 2
before any model loads, which is the house rule for user errors.
"""

from __future__ import annotations

import argparse

__all__ = ["fraction", "non_negative_float", "non_negative_int", "positive_int"]


def _parsed(text: str, kind: type, what: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _check(ok: bool, rule: str, text: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")


def positive_int(text: str) -> int:
    """A count that must be at least 1 (rows per shard, tokens, steps, batch sizes)."""
    value = _parsed(text, int, "a whole number")
    _check(value >= 1, "at least 1", text)
    return int(value)


def non_negative_int(text: str) -> int:
    """A count where 0 is a real choice (``icl-eval --k 0`` is zero-shot)."""
    value = _parsed(text, int, "a whole number")
    _check(value >= 0, "at least 0", text)
    return int(value)


def non_negative_float(text: str) -> float:
    """A number that must be at least 0 (temperatures, thresholds); NaN is refused."""
    value = _parsed(text, float, "a number")
    _check(value >= 0, "at least 0", text)
    return float(value)


def fraction(text: str) -> float:
    """A fraction in (0, 1] (a compression rate: a 0 rate is no prompt)."""
    value = _parsed(text, float, "a number in (0, 1]")
    _check(0 < value <= 1, "in (0, 1]", text)
    return float(value)
