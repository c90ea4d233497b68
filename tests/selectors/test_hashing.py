"""The shared Unicode tables and UTF-8 helpers the compiled kernels rely on.

What must hold: every table equals the Python definition it stands for, over every code point
(``\\w`` of ``re``, ``str.isspace``, ``str.lower``, ``str.casefold``), because a kernel that
disagreed with ``words()`` or ``normalize()`` on one character would make two selectors (or a
compiled and a NumPy run) disagree on a document; and the compiled UTF-8 decoder/encoder round
trips every code point, surrogates included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from datadiet.selectors.hashing import (
    NUMBA_INSTALLED,
    casefold_table,
    fmix64,
    is_word_char,
    lower_table,
    nb_decode,
    nb_encode,
    non_ascii_texts,
    numba_enabled,
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


@pytest.mark.skipif(not numba_enabled(), reason="compiled kernels need numba")
def test_compiled_utf8_round_trips_every_code_point() -> None:
    text = "".join(chr(c) for c in range(0, 0x110000, 7))
    buf, offsets = utf8_layout([text])
    assert offsets.tolist() == [0, len(buf)]
    out = np.empty(len(buf), np.uint8)
    i = o = 0
    decoded = []
    while i < len(buf):
        cp, i = nb_decode(buf, i)
        decoded.append(cp)
        o = nb_encode(out, o, cp)
    assert decoded == [ord(ch) for ch in text]
    assert out[:o].tobytes() == buf.tobytes()


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


LAZY_NUMBA_PROBE = """
import sys
import datadiet.selectors
from datadiet.selectors import exact, hashing, minhash
assert "numba" not in sys.modules, "importing the selectors imported numba"
small = ["Hello, World!", "hello world", "ß and Straße"] * 10
assert not hashing.numba_enabled(len(small))
numpy_hashes = exact.text_hashes(small, True)
assert "numba" not in sys.modules, "a small batch loaded numba"
big = small * (hashing.KERNEL_MIN_ROWS // len(small) + 1)
compiled = exact.text_hashes(big, True)
assert "numba" in sys.modules
assert hashing.numba_enabled(hashing.KERNEL_MIN_ROWS)
assert (compiled[: len(small)] == numpy_hashes).all()
assert hashing.numba_enabled(1), "once loaded, small batches use the kernels too"
assert type(minhash._nb_shard).__name__ == "CPUDispatcher"  # names rebound, no wrapper left
assert minhash.prange is sys.modules["numba"].prange
print("ok")
"""


@pytest.mark.skipif(not NUMBA_INSTALLED, reason="compiled kernels need numba")
def test_numba_loads_on_the_first_big_kernel_call_only() -> None:
    """numba's import and first kernel load (~1 CPU-s, ~100 MiB) happen when a kernel first
    runs on a batch big enough to pay for it, and not before; then every kernel module's names
    are the compiled dispatchers, and the compiled path agrees with the NumPy one."""
    env = {k: v for k, v in os.environ.items() if k != "DATADIET_NUMBA"}
    env["DATADIET_NATIVE"] = "0"  # the C kernels would take the work numba is probed on
    out = subprocess.run([sys.executable, "-c", LAZY_NUMBA_PROBE], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


BROKEN_NUMBA_PROBE = """
from datadiet.selectors import exact, hashing
texts = ["Hello, World!", "ß and Straße"] * (hashing.KERNEL_MIN_ROWS // 2)
assert hashing.NUMBA_INSTALLED
assert not hashing.numba_enabled(len(texts)) and hashing._numba_broken
assert exact.text_hashes(texts, True).shape == (len(texts), 2)
assert hashing.nb_fmix64(hashing.U64(1)) == hashing.fmix64(hashing.np.array([1], hashing.U64))[0]
print("ok")
"""


def test_a_numba_that_fails_to_import_means_the_numpy_paths(tmp_path) -> None:
    """numba is found on disk but its import fails (as when it was built for another NumPy):
    the steps take their NumPy paths and a kernel called directly runs as Python, instead of
    the run stopping with an ImportError."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less")\n')
    env = {k: v for k, v in os.environ.items() if k != "DATADIET_NUMBA"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", BROKEN_NUMBA_PROBE], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
