"""The shared Unicode tables and UTF-8 helpers the compiled kernels rely on.

What must hold: every table equals the Python definition it stands for, over every code point
(``\\w`` of ``re``, ``str.isspace``, ``str.lower``, ``str.casefold``), because a kernel that
disagreed with ``words()`` or ``normalize()`` on one character would make two selectors (or a
C and a NumPy run) disagree on a document; and the scans for non-ASCII texts and special
characters agree with Python with and without the C library.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from datadiet.selectors.hashing import (
    casefold_table,
    fmix64,
    is_word_char,
    lower_table,
    non_ascii_texts,
    space_table,
    text_getter,
    texts_containing,
    utf8_layout,
    word_char_table,
)
from datadiet.selectors.unicode_tables import (
    CASE_TABLE_SIZE,
    CASEFOLD_NEEDS_PYTHON,
    regex_char_table,
)

ALL = range(0x110000)


def test_word_and_space_tables_match_re_over_every_code_point() -> None:
    word, space = re.compile(r"\w"), re.compile(r"\s")
    expected_word = np.fromiter((word.match(chr(c)) is not None for c in ALL), bool, 0x110000)
    expected_space = np.fromiter((space.match(chr(c)) is not None for c in ALL), bool, 0x110000)
    assert np.array_equal(word_char_table(), expected_word)
    assert np.array_equal(space_table(), expected_space)
    assert np.array_equal(space_table(), np.fromiter((chr(c).isspace() for c in ALL), bool))


def test_partial_word_tables_are_prefixes_of_the_whole_one() -> None:
    """The uncompiled paths build the ``\\w`` table only as far as a batch's largest code point;
    every prefix must equal the whole table's, and lookups must agree whichever table is used."""
    whole = word_char_table()
    for size in (1, 2, 128, 0x800, 0xD800, 0xE000, 0x10000):
        assert np.array_equal(regex_char_table(r"\w", size), whole[:size])
    word_char_table.cache_clear()  # as in a fresh process: is_word_char builds a prefix only
    for top in (0, 1, 127, 128, 0xB5, 0x3A3, 0xD800, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF):
        cp = np.array([0, 48, 95, top, top // 2], np.uint32)
        assert np.array_equal(is_word_char(cp), whole[cp]), hex(top)
    assert word_char_table.cache_info().currsize == 0
    assert is_word_char(np.zeros(0, np.uint32)).shape == (0,)


def test_case_tables_match_str_methods_and_nothing_is_cased_above_them() -> None:
    lower, fold = lower_table(), casefold_table()
    for c in range(CASE_TABLE_SIZE):
        ch = chr(c)
        if len(ch.lower()) == 1:
            assert lower[c] == ord(ch.lower())
        if fold[c] != CASEFOLD_NEEDS_PYTHON:
            assert chr(fold[c]) == ch.casefold()
            assert len(ch.casefold().encode("utf-8", "surrogatepass")) <= len(
                ch.encode("utf-8", "surrogatepass")
            )
        else:
            assert len(ch.casefold()) > 1 or len(ch.casefold().encode()) > len(ch.encode())
    for c in range(CASE_TABLE_SIZE, 0x110000):
        assert chr(c).lower() == chr(c) and chr(c).casefold() == chr(c)
    assert fold[ord("ß")] == CASEFOLD_NEEDS_PYTHON and fold[ord("Σ")] == ord("σ")


def test_fmix64_is_murmur3s_finaliser() -> None:
    # Known values of MurmurHash3's fmix64 (computed with Python integers).
    def reference(x: int) -> int:
        m = (1 << 64) - 1
        x ^= x >> 33
        x = (x * 0xFF51AFD7ED558CCD) & m
        x ^= x >> 33
        x = (x * 0xC4CEB9FE1A85EC53) & m
        return x ^ (x >> 33)

    xs = [0, 1, 2**63, 0xDEADBEEF, (1 << 64) - 1]
    assert fmix64(np.array(xs, np.uint64)).tolist() == [reference(x) for x in xs]


def _arrow_variants(texts: list[str]) -> list:
    """The same texts as Arrow columns the steps may meet: plain, sliced out of a longer array
    (offsets not starting at 0), chunked, 64-bit offsets."""
    padded = pa.array(["before", *texts, "after"])
    half = len(texts) // 2
    return [
        pa.array(texts),
        padded.slice(1, len(texts)),
        pa.chunked_array([pa.array(texts[:half], pa.string()), pa.array(texts[half:], pa.string())]),
        pa.array(texts, pa.large_string()),
    ]


def test_arrow_columns_lay_out_like_python_strings(wiki_paragraphs: list[str]) -> None:
    texts = [*wiki_paragraphs[:20], "", "Ünïcödé ΣΑΣ İ", "x"]
    buf, offsets = utf8_layout(texts)
    for column in _arrow_variants(texts):
        abuf, aoffsets = utf8_layout(column)
        assert np.array_equal(aoffsets, offsets) and abuf.tobytes() == buf.tobytes()
        get = text_getter(column, abuf, aoffsets)
        assert [get(i) for i in range(len(texts))] == texts
    nulls = utf8_layout(pa.array(["a", None, "bc"]))
    assert nulls[1].tolist() == [0, 1, 1, 3] and nulls[0].tobytes() == b"abc"
    assert utf8_layout(pa.array([], pa.string()))[1].tolist() == [0]
    assert non_ascii_texts(buf, offsets).tolist() == [
        i for i, t in enumerate(texts) if not t.isascii()]
    for chars in ("\u0130", "\u0130\u03a3", "é"):
        assert texts_containing(buf, offsets, chars).tolist() == [
            i for i, t in enumerate(texts) if any(c in t for c in chars)]


def test_scans_without_the_c_library(wiki_paragraphs: list[str], without_c: None) -> None:
    """The NumPy/Python scans of the fallback find the same texts as Python's own tests."""
    texts = [*wiki_paragraphs[:20], "", "Ünïcödé ΣΑΣ İ", "x", "é at the end é"]
    buf, offsets = utf8_layout(texts)
    assert non_ascii_texts(buf, offsets).tolist() == [
        i for i, t in enumerate(texts) if not t.isascii()]
    assert len(non_ascii_texts(buf, offsets)) >= 2
    for chars in ("\u0130", "\u0130\u03a3", "é"):
        assert texts_containing(buf, offsets, chars).tolist() == [
            i for i, t in enumerate(texts) if any(c in t for c in chars)]
