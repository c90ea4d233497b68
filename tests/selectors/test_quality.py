"""Gopher/C4 quality rules on real text: real prose is kept, each kind of junk is removed by the
rule that names it. Every rule is exercised by a small mutation of a real paragraph."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.quality import (
    GOPHER_STOP_WORDS,
    QualityFilter,
    _char_classes,
    quality_feature_matrix,
    quality_feature_names,
    quality_features,
)

CTX = StepContext(show_progress=False)


def _detokenize(s: str) -> str:
    """Undo WikiText's tokenisation (`` , `` ``@-@``) so it reads like the web text Gopher's
    rules were written for (its separate punctuation tokens would fail the alphabetic rule)."""
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r" ([,.;:!?)\]'])", r"\1", s)
    s = re.sub(r"([(\[]) ", r"\1", s)
    return s.replace(" n't", "n't")


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> list[str]:
    with open(shared_data / "lm" / "wikitext2_valid.txt", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f]
    return [_detokenize(ln) for ln in lines if ln and not ln.startswith("=")]


@pytest.fixture(scope="module")
def doyle_text(shared_data: Path) -> str:
    return (shared_data / "lm" / "doyle_adventures.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def doyle(doyle_text: str) -> list[str]:
    """Sherlock Holmes paragraphs, with their original line wraps."""
    return [p.strip() for p in re.split(r"\n\s*\n", doyle_text) if p.strip()]


@pytest.fixture(scope="module")
def para(doyle: list[str]) -> str:
    """One long, ordinary narrative paragraph (the mutation tests' starting point)."""
    return next(p for p in doyle if p.startswith("I had seen little of Holmes lately."))


@pytest.fixture(scope="module")
def lines(doyle: list[str]) -> list[str]:
    """Twenty distinct wrapped lines of real prose."""
    out = [ln.strip() for p in doyle[40:] for ln in p.split("\n") if len(ln.split()) >= 8]
    return list(dict.fromkeys(out))[:20]


def _long(docs: list[str], min_words: int = 80) -> list[str]:
    return [d for d in docs if len(d.split()) >= min_words]


def test_registered_and_params_round_trip() -> None:
    assert STEP_REGISTRY["quality"] is QualityFilter
    q = QualityFilter(min_words=20, c4_curly_brace=True)
    assert QualityFilter(**q.params()).params() == q.params()
    # A manifest stores the n-gram tables as JSON, which turns int keys into strings.
    again = QualityFilter(**json.loads(json.dumps(q.params())))
    assert again.params() == q.params()
    assert q.max_top_ngram_char_fraction == {2: 0.20, 3: 0.18, 4: 0.16}
    assert q.max_dup_ngram_char_fraction[10] == 0.10


def test_keeps_real_wikipedia_paragraphs(wiki: list[str]) -> None:
    docs = _long(wiki)
    assert len(docs) > 1000
    sel = QualityFilter().select(Dataset.from_dict({"text": docs}), CTX)
    assert sel.n_kept / len(docs) > 0.95, sel.removed_by_kind()


def test_keeps_real_sherlock_holmes_paragraphs(doyle: list[str]) -> None:
    docs = _long(doyle)
    assert len(docs) > 300
    sel = QualityFilter().select(Dataset.from_dict({"text": docs}), CTX)
    assert sel.n_kept / len(docs) > 0.95, sel.removed_by_kind()


def test_the_whole_book_is_too_long_but_otherwise_fine(doyle_text: str) -> None:
    assert QualityFilter().check(doyle_text)[0] == "max_words"  # 107 507 words > 100 000
    assert QualityFilter(max_words=None).check(doyle_text) is None


# -- each rule, by a minimal mutation of real text ---------------------------------------------


def _every(text: str, n: int, fn) -> str:
    """Apply ``fn`` to every n-th whitespace word."""
    return " ".join(fn(w) if i % n == 0 else w for i, w in enumerate(text.split()))


def _wrap(ws: list[str], per_line: int, fmt: str = "{}") -> str:
    return "\n".join(fmt.format(" ".join(ws[i : i + per_line]))
                     for i in range(0, len(ws), per_line))


MUTATIONS = {
    "min_words": lambda p, lines: " ".join(p.split()[:30]),
    "min_mean_word_length": lambda p, lines: " ".join(w[:2] for w in p.split()),
    "max_mean_word_length": lambda p, lines: " ".join(
        "".join(p.split()[i : i + 3]) for i in range(0, len(p.split()), 3)),
    "max_symbol_word_ratio": lambda p, lines: _every(p, 6, lambda w: "#" + w),
    "min_alpha_word_ratio": lambda p, lines: _every(p, 2, lambda w: w + " 1887"),
    "min_stop_words": lambda p, lines: " ".join(
        w for w in p.split() if re.sub(r"\W", "", w.lower()) not in GOPHER_STOP_WORDS),
    "max_bullet_line_ratio": lambda p, lines: _wrap(p.split(), 12, "• {}"),
    "max_ellipsis_line_ratio": lambda p, lines: _wrap(p.split(), 15, "{}…"),
    "max_duplicate_line_fraction": lambda p, lines: "\n".join(
        lines[:10] + ["“Yes,” said he."] * 6),
    "max_duplicate_paragraph_fraction": lambda p, lines: "\n\n".join(
        ["\n".join(lines[:10]), "\n".join(lines[10:20]), "Quite so.", "Quite so.", "Quite so.",
         "Very good."]),
    "max_duplicate_line_char_fraction": lambda p, lines: "\n".join(
        [ln[:25] for ln in lines[:10]] + [" ".join(lines[10:16])] * 3),
    "max_top_2gram_char_fraction": lambda p, lines: _every(p, 4, lambda w: w + " buy now"),
    "max_dup_5gram_char_fraction": lambda p, lines: p + " " + " ".join(p.split()[:70]),
}


@pytest.mark.parametrize("rule", list(MUTATIONS))
def test_each_rule_removes_its_junk(rule: str, para: str, lines: list[str]) -> None:
    q = QualityFilter()
    assert q.check(para) is None and q.check("\n".join(lines)) is None
    junk = MUTATIONS[rule](para, lines)
    failed = q.check(junk)
    assert failed is not None and failed[0] == rule, (failed, junk[:300])
    if rule in q.params():  # a scalar threshold: ``None`` switches it off, and the mutation
        after = QualityFilter(**{rule: None}).check(junk)  # trips no rule checked before it
        assert after is None or q.rule_names.index(after[0]) > q.rule_names.index(rule)


def test_ngram_tables_can_be_switched_off(para: str) -> None:
    junk = MUTATIONS["max_top_2gram_char_fraction"](para, [])
    assert QualityFilter(max_top_ngram_char_fraction={}).check(junk) is None
    dup = MUTATIONS["max_dup_5gram_char_fraction"](para, [])
    assert QualityFilter(max_dup_ngram_char_fraction={}).check(dup) is None
    assert QualityFilter(max_dup_ngram_char_fraction={10: 0.10}).check(dup)[0] == (
        "max_dup_10gram_char_fraction")


def test_duplicate_paragraph_char_fraction(lines: list[str]) -> None:
    """A long paragraph repeated once among five: 20% of paragraphs (allowed) but ~29% of the
    characters. Its lines repeat too, so with Gopher's equal thresholds the line rule fires
    first; with that rule off, the paragraph rule catches it."""
    long_par = "\n".join(lines[:8])
    pars = [long_par] + ["\n".join(lines[i : i + 4]) for i in (8, 12, 16)] + [long_par]
    doc = "\n\n".join(pars)
    assert QualityFilter().check(doc)[0] == "max_duplicate_line_char_fraction"
    q = QualityFilter(max_duplicate_line_char_fraction=None)
    assert q.check(doc)[0] == "max_duplicate_paragraph_char_fraction"


def test_symbol_rule_counts_ellipses_too(para: str) -> None:
    junk = _every(para, 6, lambda w: w + "...")
    assert QualityFilter().check(junk)[0] == "max_symbol_word_ratio"


@pytest.mark.parametrize(
    "flag, insert",
    [
        ("c4_lorem_ipsum", "Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
        ("c4_curly_brace", "function show() { return holmes; }"),
        ("c4_javascript", "\nPlease enable JavaScript to view the comments.\n"),
        ("c4_policy", "\nThis site uses cookies. Read our privacy policy.\n"),
    ],
)
def test_c4_flags_are_off_by_default(flag: str, insert: str, para: str) -> None:
    doc = para + " " + insert
    assert QualityFilter().check(doc) is None
    assert QualityFilter(**{flag: True}).check(doc)[0] == flag


def test_c4_min_sentences(para: str) -> None:
    two = ". ".join(" ".join(para.split()[i : i + 30]) for i in (0, 30)) + "."
    assert QualityFilter().check(two) is None
    assert QualityFilter(c4_min_sentences=5).check(two)[0] == "c4_min_sentences"
    assert QualityFilter(c4_min_sentences=5).check(para) is None


# -- the step ----------------------------------------------------------------------------------


def test_step_names_first_rule_counts_per_rule_and_keeps_real_text(
    para: str, lines: list[str], wiki: list[str]
) -> None:
    real = _long(wiki)[:40]
    junk = {rule: fn(para, lines) for rule, fn in MUTATIONS.items()}
    texts = real + list(junk.values()) + ["", "Too short."]
    ds = Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": texts})
    sel = QualityFilter().select(ds, StepContext(show_progress=False, batch_size=7))

    assert sel.keep[: len(real)].sum() >= len(real) - 2
    for i, rule in enumerate(junk, start=len(real)):
        assert sel.reason_kind[i] == f"quality:{rule}"
        assert sel.reason(i).startswith(f"quality:{rule}:")  # detail = measured value
    assert sel.reason_kind[-1] == sel.reason_kind[-2] == "quality:min_words"
    assert sel.reason(len(texts) - 2) == "quality:min_words:0"

    by_rule = sel.stats["removed_by_rule"]
    assert set(by_rule) == set(QualityFilter().rule_names)
    assert sum(by_rule.values()) == sel.stats["removed"] == len(texts) - sel.n_kept
    assert {f"quality:{r}": c for r, c in by_rule.items() if c} == sel.removed_by_kind()


def test_features_are_named_numbers(para: str) -> None:
    f = quality_features(para)
    assert f == quality_features(para)  # pure
    assert all(isinstance(v, float) for v in f.values())
    assert f["n_words"] == len(para.split())
    assert f["stop_words"] >= 20 and f["alpha_word_ratio"] > 0.95
    assert f["duplicate_line_fraction"] == 0.0 and f["dup_5gram_char_fraction"] == 0.0
    doubled = quality_features(para + "\n" + para)
    assert doubled["duplicate_paragraph_fraction"] == 0.0  # one paragraph (no blank line)
    assert 0.45 < doubled["dup_10gram_char_fraction"] <= 0.5
    assert 0.45 < doubled["duplicate_line_fraction"] <= 0.5


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gives_bounded_features(text: str) -> None:
    f = quality_features(text)
    per_word_counts = {"hash_word_ratio", "ellipsis_word_ratio", "symbol_word_ratio"}
    for key, value in f.items():
        assert np.isfinite(value) and value >= 0, key
        if ("fraction" in key or key.endswith("_ratio")) and key not in per_word_counts:
            assert value <= 1.0, (key, value)
    QualityFilter(c4_min_sentences=3, c4_javascript=True).check(text)  # never raises


def test_throughput_is_heuristic_cheap(doyle: list[str]) -> None:
    """Thousands of documents per second per core: cheap enough to run before anything else."""
    import time

    docs = _long(doyle, 50) * 3
    start = time.perf_counter()
    QualityFilter().select(Dataset.from_dict({"text": docs}), CTX)
    rate = len(docs) / (time.perf_counter() - start)
    assert rate > 300, rate  # measured ~3 000 docs/s (of ~150 words) on one shared core


# -- the compiled feature matrix equals the Python definitions ---------------------------------

QUALITY_ALPHABET = (
    "ab AB the of and to \n\n\n  \t\r\x0b\x1c\u00a0\u3000 . ! ? … # { } - * • ► – \" ' ” ’ ) ] "
    "_ 1 ² ½ ٣ é Σ σ ς İ K ß 한 \ud800 javascript JavaScript lorem ipsum Lorem Ipsum uses cookies "
    "privacy policy ... .... ?! !) ."
)


def _reference_rows(texts: list[str], **ns: tuple[int, ...]) -> np.ndarray:
    names = quality_feature_names(**ns) if ns else quality_feature_names()
    rows = [[quality_features(t, **ns)[k] for k in names] for t in texts]
    return np.array(rows, np.float64).reshape(len(texts), len(names))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=QUALITY_ALPHABET, max_size=200),
    st.lists(st.sampled_from(QUALITY_ALPHABET.split(" ")), max_size=80).map(" ".join),
    st.lists(st.sampled_from(["the cat sat", "on the mat", "\n", "\n\n", " ", "...", "•"]),
             max_size=40).map("".join),
    st.text(max_size=60),
), max_size=6))
def test_property_feature_matrix_equals_quality_features(texts: list[str]) -> None:
    assert np.array_equal(quality_feature_matrix(texts), _reference_rows(texts))


def test_feature_matrix_on_real_documents(doyle: list[str], wiki: list[str],
                                          shared_data: Path) -> None:
    t0 = []
    for name in ("cnn_dailymail_3_0_0_news_summary", "common_gen_Put_together", "samsum_Summarize_"):
        with open(shared_data / "sft" / "t0_train" / f"{name}.jsonl", encoding="utf-8") as f:
            t0 += [(r := json.loads(line))["prompt"] + r["completion"] for line in f][:40]
    texts = doyle[:150] + wiki[:150] + t0 + ["\n\n".join(doyle[:30]) * 2]
    assert np.array_equal(quality_feature_matrix(texts), _reference_rows(texts))
    ns = {"top_ngrams": (3,), "dup_ngrams": (2, 7)}
    assert np.array_equal(quality_feature_matrix(texts[:50], **ns), _reference_rows(texts[:50], **ns))


def test_step_without_numba_gives_the_same_selection(
    para: str, lines: list[str], wiki: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = _long(wiki)[:30] + [fn(para, lines) for fn in MUTATIONS.values()] + ["", "x"]
    ds = Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": texts})
    step = QualityFilter(c4_min_sentences=3, c4_javascript=True)
    fast = step.select(ds, CTX)
    assert fast.reason_kind.tolist() == [
        "" if (r := step.check(t)) is None else f"quality:{r[0]}" for t in texts
    ]
    monkeypatch.setenv("DATADIET_NUMBA", "0")
    slow = step.select(ds, CTX)
    assert fast.reason_kind.tolist() == slow.reason_kind.tolist()
    assert fast.reason_detail.tolist() == slow.reason_detail.tolist()
    assert fast.stats == slow.stats


def test_character_classes_match_the_rules_regexes() -> None:
    cls = _char_classes()
    for bit, pattern in ((1, r"\w"), (2, r"[^\W_]"), (4, r"[^\W\d_]"), (8, r"\s")):
        rx = re.compile(pattern)
        expected = np.fromiter((rx.match(chr(c)) is not None for c in range(0x110000)), bool)
        assert np.array_equal(cls & bit != 0, expected), pattern


def test_feature_matrix_without_c4_drops_only_those_columns(para: str, lines: list[str]) -> None:
    texts = [para, "\n".join(lines), "javascript {lorem ipsum}. Yes!"]
    full = quality_feature_matrix(texts)
    names = quality_feature_names()
    lean = quality_feature_matrix(texts, c4=False)
    lean_names = quality_feature_names(c4=False)
    assert lean_names == [n for n in names if n not in {
        "has_lorem_ipsum", "has_curly_brace", "javascript_lines", "policy_lines", "n_sentences"}]
    assert np.array_equal(lean, full[:, [names.index(n) for n in lean_names]])


def test_feature_matrix_reads_arrow_columns_in_place(doyle: list[str]) -> None:
    texts = [*doyle[:30], "ΟΔΟΣ ΣΟΦΟΣ İ the of and", "", "#"]
    expected = quality_feature_matrix(texts)
    for column in (pa.array(texts), pa.array(["x", *texts]).slice(1),
                   pa.chunked_array([texts[:5], texts[5:]])):
        assert np.array_equal(quality_feature_matrix(column), expected)
    assert np.array_equal(quality_feature_matrix(pa.array(["a", None])),
                          quality_feature_matrix(["a", ""]))
