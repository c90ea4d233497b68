"""The per-code-point Unicode tables the hashing kernels look characters up in, computed
from Python's own definitions (``re``'s ``\\w`` and ``\\s``, ``str.lower``, ``str.casefold``).

Why a module of its own: both :mod:`datadiet.selectors.hashing` (which loads the saved tables
and falls back to these) and :mod:`datadiet.selectors.native` (which saves them at install
time) need the definitions; here they import it, and neither imports the other to get them.
"""

from __future__ import annotations

import functools
import re

import numpy as np

__all__ = ["CASEFOLD_NEEDS_PYTHON", "CASE_TABLE_SIZE", "build_character_tables",
           "build_casefold_table", "build_lower_table", "every_code_point", "regex_char_table"]

#: Code points at or above this are their own lower case and case fold (no cased character
#: lies above U+1E943), so the case tables stop here.
CASE_TABLE_SIZE = 0x20000
#: ``casefold_table()[cp]`` for a code point whose case fold is several code points or a longer
#: UTF-8 sequence: a kernel cannot fold it in place, so the text goes through ``str.casefold``.
CASEFOLD_NEEDS_PYTHON = np.uint32(0xFFFFFFFF)


@functools.cache
def every_code_point() -> str:
    """One string holding every code point in order (surrogates included)."""
    return np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


def regex_char_table(char_class: str, size: int = 0x110000) -> np.ndarray:
    """``table[cp]`` is True where ``chr(cp)`` matches the one-character ``re`` class
    ``char_class`` (such as ``r"\\w"``), for the code points below ``size``: the class itself
    decides, so a kernel using the table agrees with the regex by construction. One scan over
    all code points (~0.05-0.09 s)."""
    table = np.zeros(size, bool)
    chars = every_code_point() if size == 0x110000 else (
        np.arange(size, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass"))
    for m in re.finditer(f"(?:{char_class})+", chars):
        table[m.start() : m.end()] = True
    return table


def build_lower_table() -> np.ndarray:
    lowered = map(str.lower, every_code_point()[:CASE_TABLE_SIZE])
    table = np.fromiter((ord(x) if len(x) == 1 else -1 for x in lowered), np.int64, CASE_TABLE_SIZE)
    ident = np.arange(CASE_TABLE_SIZE)
    return np.where(table < 0, ident, table).astype(np.uint32)


def build_casefold_table() -> np.ndarray:
    table = np.arange(CASE_TABLE_SIZE, dtype=np.uint32)
    chars = every_code_point()[:CASE_TABLE_SIZE]
    for c, (ch, folded) in enumerate(zip(chars, map(str.casefold, chars), strict=True)):
        if folded == ch:
            continue
        if len(folded) != 1 or len(folded.encode("utf-8")) > len(ch.encode("utf-8")):
            table[c] = CASEFOLD_NEEDS_PYTHON
        else:
            table[c] = ord(folded)
    return table


def build_character_tables() -> dict[str, np.ndarray]:
    """The tables above computed afresh (not loaded), for the install-time table file."""
    return {"word": regex_char_table(r"\w"), "space": regex_char_table(r"\s"),
            "lower": build_lower_table(), "casefold": build_casefold_table()}
