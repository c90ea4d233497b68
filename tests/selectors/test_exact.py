"""Exact dedup (``exact_dedup``) on real paragraphs with planted copies.

What must hold: every later copy of a text (up to normalisation: case, punctuation,
whitespace) is removed with a reason naming the first occurrence; distinct texts survive; the
result is the grouping a plain Python dict of normalised texts would give, whatever the input
order and batch size; running the step on its own output removes nothing.
"""

from __future__ import annotations

import random
import unicodedata

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.pipeline.text import normalize
from datadiet.selectors.common import row_ids
from datadiet.selectors.exact import (
    ExactDedup,
    _nfkc,
    first_occurrence,
    normalized_utf8,
    text_hashes,
)

HYPO = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def ctx(**kw) -> StepContext:
    return StepContext(show_progress=False, **kw)


def dataset(texts: list[str], ids: list[str] | None = None) -> Dataset:
    ids = ids if ids is not None else [f"d{i}" for i in range(len(texts))]
    return Dataset.from_dict({"id": ids, "text": texts})


@pytest.fixture(scope="module")
def paragraphs(wiki_paragraphs: list[str]) -> list[str]:
    out = list(dict.fromkeys(wiki_paragraphs[:120]))  # distinct real paragraphs
    assert len({normalize(p) for p in out}) == len(out)
    return out


def test_planted_copies_are_removed(paragraphs: list[str]) -> None:
    rng = random.Random(0)
    texts, ids = list(paragraphs), [f"p{i}" for i in range(len(paragraphs))]
    expected = {}
    for i in range(0, len(paragraphs), 10):
        p = paragraphs[i]
        variants = {
            "copy": p,
            "upper": p.upper(),
            "spaced": "  " + p.replace(" ", "\t ") + "\n",
            "punct": p.replace(",", " ;").replace(".", "!"),
        }
        for kind, text in variants.items():
            texts.append(text)
            ids.append(f"p{i}-{kind}")
            expected[ids[-1]] = f"p{i}"
    order = list(range(len(paragraphs))) + rng.sample(
        range(len(paragraphs), len(texts)), len(texts) - len(paragraphs)
    )
    ds = dataset([texts[k] for k in order], [ids[k] for k in order])
    sel = ExactDedup().select(ds, ctx(batch_size=17))
    removed = {ds[int(r)]["id"]: sel.reason(int(r)) for r in sel.removed_indices}
    assert removed == {k: f"exact-duplicate-of:{v}" for k, v in expected.items()}
    assert sel.n_kept == len(paragraphs)
    assert sel.stats == {"removed": len(expected), "duplicate_groups": len(expected) // 4}


def test_without_normalisation_only_identical_text_is_a_copy(paragraphs: list[str]) -> None:
    p = paragraphs[0]
    ds = dataset([p, p.upper(), p, p + " "])
    sel = ExactDedup(normalize=False).select(ds, ctx())
    assert sel.keep.tolist() == [True, True, False, True]
    assert sel.reason(2) == "exact-duplicate-of:d0"
    assert ExactDedup().select(ds, ctx()).keep.tolist() == [True, False, False, False]


def test_first_occurrence_is_kept_and_every_copy_points_to_it(paragraphs: list[str]) -> None:
    a, b = paragraphs[:2]
    ds = dataset([b, a, a, b, a], ["x", "y", "z", "w", "v"])
    sel = ExactDedup().select(ds, ctx())
    assert sel.keep.tolist() == [True, True, False, False, False]
    assert [sel.reason(i) for i in (2, 3, 4)] == [
        "exact-duplicate-of:y", "exact-duplicate-of:x", "exact-duplicate-of:y"
    ]


def test_empty_dataset() -> None:
    sel = ExactDedup().select(dataset([]), ctx())
    assert sel.n_rows == 0


def test_empty_and_punctuation_only_texts() -> None:
    """They normalise to the empty string, so they are copies of each other."""
    sel = ExactDedup().select(dataset(["", "!!!", " ", "x"]), ctx())
    assert sel.keep.tolist() == [True, False, False, True]


def test_missing_id_column_falls_back_to_row_index(paragraphs: list[str]) -> None:
    ds = Dataset.from_dict({"text": [paragraphs[0], paragraphs[1], paragraphs[0]]})
    sel = ExactDedup().select(ds, ctx())
    assert sel.reason(2) == "exact-duplicate-of:0"


def test_custom_columns_and_non_string_ids(paragraphs: list[str]) -> None:
    ds = Dataset.from_dict({"key": [10, 20], "body": [paragraphs[0], paragraphs[0]]})
    sel = ExactDedup().select(ds, ctx(text_field="body", id_field="key"))
    assert sel.reason(1) == "exact-duplicate-of:10"


def test_row_ids_follow_an_indices_mapping(paragraphs: list[str]) -> None:
    ds = dataset(paragraphs[:6]).select([5, 3, 1])
    assert row_ids(ds, "id", np.array([2, 0])).tolist() == ["d1", "d5"]


def test_hashes_are_compact_arrays(paragraphs: list[str]) -> None:
    h = text_hashes(paragraphs[:10])
    assert h.shape == (10, 2) and h.dtype == np.uint64
    assert np.array_equal(h, text_hashes(paragraphs[:10]))
    assert len({tuple(r) for r in h.tolist()}) == 10


def test_step_protocol() -> None:
    step = ExactDedup(normalize=False)
    assert STEP_REGISTRY["exact_dedup"] is ExactDedup
    assert type(step)(**step.params()).params() == {"normalize": False}


# ----------------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------------


@st.composite
def corpora(draw: st.DrawFn, paragraphs: list[str]) -> list[str]:
    """Real paragraphs, some repeated with case/whitespace/punctuation changes, plus noise."""
    base = [paragraphs[i] for i in draw(st.lists(st.integers(0, len(paragraphs) - 1),
                                                 max_size=10))]
    texts = list(base)
    for _ in range(draw(st.integers(0, 12))):
        if not base or draw(st.booleans()) and draw(st.booleans()):
            texts.append(draw(st.text(max_size=20)))
            continue
        p = draw(st.sampled_from(base))
        texts.append(draw(st.sampled_from([p, p.upper(), f" {p} ", p.replace(",", "")])))
    return draw(st.permutations(texts))


def reference_groups(texts: list[str]) -> list[int]:
    """Index of the first text with the same normalised form, by a plain dict."""
    first: dict[str, int] = {}
    return [first.setdefault(normalize(t), i) for i, t in enumerate(texts)]


@HYPO
@given(data=st.data())
def test_property_matches_a_dict_of_normalised_texts(
    paragraphs: list[str], data: st.DataObject
) -> None:
    texts = data.draw(corpora(paragraphs))
    bs = data.draw(st.integers(1, 8))
    sel = ExactDedup().select(dataset(texts), ctx(batch_size=bs))
    ref = reference_groups(texts)
    assert sel.keep.tolist() == [r == i for i, r in enumerate(ref)]
    for i, r in enumerate(ref):
        if r != i:
            assert sel.reason(i) == f"exact-duplicate-of:d{r}"


@HYPO
@given(data=st.data())
def test_property_idempotent_and_order_free(paragraphs: list[str], data: st.DataObject) -> None:
    texts = data.draw(corpora(paragraphs))
    step = ExactDedup()
    sel = step.select(dataset(texts), ctx())
    kept = [texts[i] for i in sel.kept_indices]
    assert step.select(dataset(kept), ctx()).n_kept == len(kept)
    # any order: the same partition of texts into groups
    perm = data.draw(st.permutations(range(len(texts))))
    shuffled = [texts[p] for p in perm]
    sel2 = step.select(dataset(shuffled), ctx())

    def groups(sel, n: int, back: list[int]) -> set[frozenset[int]]:  # noqa: ANN001
        label = [i if sel.keep[i] else int(sel.reason_detail[i][1:]) for i in range(n)]
        out: dict[int, set[int]] = {}
        for i, lab in enumerate(label):
            out.setdefault(back[lab], set()).add(back[i])
        return {frozenset(g) for g in out.values()}

    ident = list(range(len(texts)))
    assert groups(sel, len(texts), ident) == groups(sel2, len(texts), list(perm))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=30))
def test_property_first_occurrence(values: list[int]) -> None:
    hashes = np.array([[v % 2, v // 2] for v in values], np.uint64).reshape(-1, 2)
    got = first_occurrence(hashes).tolist()
    assert got == [values.index(v) for v in values]


TRICKY = (
    "Straße ΣΑΣ ǅ İstanbul ﬁne ½ ¼ x² ™ … \u00a0nbsp e\u0301 Ⱥ K ｆｕｌｌ ＡＢＣ 한국어 \ud800 _a_ "
    "١٢٣ \x1c\x1f \u2028 Ǆ ŉ ΐ \u0345 ﬀ"
)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.text(alphabet=TRICKY, max_size=40)),
                max_size=8))
def test_property_normalized_bytes_equal_normalize(texts: list[str]) -> None:
    """The compiled normaliser writes exactly ``normalize(t)``'s UTF-8 for any text."""
    buf, starts, lengths = normalized_utf8(texts)
    got = [buf[s : s + k].tobytes() for s, k in zip(starts, lengths, strict=True)]
    assert got == [normalize(t).encode("utf-8", "surrogatepass") for t in texts]


def test_hashes_on_real_text_equal_hashing_normalize(paragraphs: list[str]) -> None:
    texts = [*paragraphs[:40], TRICKY, TRICKY.upper(), "Ünïcödé " * 50]
    expected = [xxhash.xxh3_128_digest(normalize(t).encode("utf-8")) for t in texts[:40]]
    got = text_hashes(texts)
    assert got[:40].tobytes() == b"".join(expected)
    raw = text_hashes(texts, normalize=False)
    assert raw[:40].tobytes() == b"".join(xxhash.xxh3_128_digest(t.encode()) for t in texts[:40])


def test_arrow_columns_hash_like_python_strings(paragraphs: list[str]) -> None:
    tricky = TRICKY.replace("\ud800", "")  # Arrow holds valid UTF-8 only
    texts = [*paragraphs[:30], tricky, tricky.upper(), "", "Straße"]
    expected = text_hashes(texts)
    for column in (pa.array(texts), pa.array(["x", *texts]).slice(1),
                   pa.chunked_array([texts[:7], texts[7:]])):
        assert np.array_equal(text_hashes(column), expected)
        assert np.array_equal(text_hashes(column, normalize=False), text_hashes(texts, False))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \u0301\u0308\u00a8\u00b4ﬁ½…\u00a0\u1100\u1161\u11a8가e\u0327한\u0b47\u0b3e",
               max_size=30))
def test_property_nfkc_by_segments_equals_nfkc(text: str) -> None:
    """Combining marks after ASCII, compatibility characters, Hangul jamo, Indic two-part vowels."""
    assert _nfkc(text) == unicodedata.normalize("NFKC", text)
