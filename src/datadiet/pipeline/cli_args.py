"""argparse types shared by every sub-command, so a bad number is the same exit-2 message everywhere.

Why a module: ``curate``, ``train``, ``generate``, ``compress`` and ``icl-eval`` all take counts,
fractions and non-negative numbers; argparse turns an ``ArgumentTypeError`` into usage + exit 2
before any model loads, which is the house rule for user errors.
"""

from __future__ import annotations

import argparse

__all__ = ["fraction", "non_negative_float", "non_negative_int", "positive_int"]


def positive_int(text: str) -> int:
    """A count that must be at least 1 (rows per shard, tokens, steps, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 is a real choice (``icl-eval --k 0`` is zero-shot)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number that must be at least 0 (temperatures, thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A fraction in (0, 1] (a compression rate: a 0 rate is no prompt)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value
