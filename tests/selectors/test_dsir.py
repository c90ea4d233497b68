"""DSIR on real text: it finds movie reviews in a mixed pool far better than random, matches the
reference implementation's features and weights, and is deterministic or seeded."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

import datadiet.selectors.dsir as dsir_module
from datadiet.pipeline.io import DataError, SpecError
from datadiet.pipeline.steps import STEP_REGISTRY, StepContext
from datadiet.selectors.dsir import (
    DSIR,
    NgramHasher,
    fit_ngram_distribution,
    hashed_ngram_counts,
    load_target_texts,
    log_importance_weights,
    reference_smoothing,
)
from datadiet.selectors.random_baseline import RandomSelect

CTX = StepContext(show_progress=False)


def _labelled(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.split(" ", 1)[1].strip() for ln in f if ln.strip()]


@pytest.fixture(scope="module")
def sst2_dev(shared_data: Path) -> list[str]:
    return _labelled(shared_data / "icl" / "sst2" / "dev.txt")


@pytest.fixture(scope="module")
def pool(shared_data: Path) -> tuple[Dataset, np.ndarray]:
    """600 SST-2 train sentences hidden among 2 400 encyclopedia, play and novel snippets."""
    rng = random.Random(0)
    lm = shared_data / "lm"
    wiki = [ln.strip() for ln in open(lm / "wikitext2_valid.txt", encoding="utf-8")
            if ln.strip() and not ln.strip().startswith("=")]
    shakespeare = [ln.strip() for ln in open(lm / "tinyshakespeare.txt", encoding="utf-8")
                   if ln.strip() and not ln.strip().endswith(":")]
    doyle = [re.sub(r"\s+", " ", p).strip()
             for p in re.split(r"\n\s*\n", (lm / "doyle_adventures.txt").read_text("utf-8"))
             if p.strip()]
    parts = [
        (rng.sample(_labelled(shared_data / "icl" / "sst2" / "train.txt"), 600), 1),
        (rng.sample(wiki, 600), 0),
        (rng.sample(shakespeare, 1200), 0),
        (rng.sample(doyle, 600), 0),
    ]
    rows = [(t, label) for texts, label in parts for t in texts]
    rng.shuffle(rows)
    ds = Dataset.from_dict({"id": [str(i) for i in range(len(rows))],
                            "text": [t for t, _ in rows]})
    return ds, np.array([label for _, label in rows])


def test_registered_and_params_round_trip(sst2_dev: list[str], tmp_path: Path) -> None:
    assert STEP_REGISTRY["dsir"] is DSIR
    step = DSIR(target=sst2_dev[:5], keep=10, mode="sample", seed=1)
    params = step.params()
    assert params["target"] == sst2_dev[:5] and params["keep"] == 10
    assert DSIR(**params).params() == params
    target = tmp_path / "target.txt"
    target.write_text("a target document\n")
    assert DSIR(target=target).params()["target"] == str(target)
    # a missing target is named when the step is built, before any step runs
    with pytest.raises(DataError, match=r"nope\.txt: no such DSIR target file or folder"):
        DSIR(target=tmp_path / "nope.txt")


# -- selection quality -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_finds_movie_reviews_much_better_than_random(pool, sst2_dev, mode: str) -> None:
    ds, is_review = pool
    k = int(is_review.sum())
    sel = DSIR(target=sst2_dev, keep=k, mode=mode, seed=0).select(ds, CTX)
    precision = is_review[sel.keep].mean()
    baseline = np.mean([is_review[RandomSelect(keep=k, seed=s).select(ds, CTX).keep].mean()
                        for s in range(5)])
    assert sel.n_kept == k
    assert baseline < 0.25
    assert precision > 0.6 and precision > 2.5 * baseline, (precision, baseline)
    if mode == "topk":  # the most target-like documents are nearly all reviews
        best = np.argsort(-sel.scores, kind="stable")[:100]
        assert is_review[best].mean() >= 0.95
    assert set(sel.removed_by_kind()) == {"dsir:low-importance"}
    assert sel.stats["k"] == k and sel.stats["target_docs"] == len(sst2_dev)


def test_scores_are_the_log_importance_weights(pool, sst2_dev) -> None:
    ds, _ = pool
    texts = ds["text"]
    sel = DSIR(target=sst2_dev, keep=0.1).select(ds, StepContext(batch_size=333,
                                                                  show_progress=False))
    counts = hashed_ngram_counts(texts)
    expected = log_importance_weights(
        counts,
        fit_ngram_distribution(hashed_ngram_counts(sst2_dev), smoothing=0.5),
        fit_ngram_distribution(counts, smoothing=0.5),
    )
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-9, atol=1e-9)
    threshold = sel.scores[sel.keep].min()
    assert (sel.scores[~sel.keep] <= threshold).all()


def test_map_over_shards_equals_one_pass(pool, sst2_dev) -> None:
    """Per-shard counts sum to the global distribution; per-shard weights concatenate."""
    texts = pool[0]["text"]
    shards = [texts[i : i + 700] for i in range(0, len(texts), 700)]
    per_shard = [hashed_ngram_counts(s) for s in shards]
    raw = fit_ngram_distribution(sum(np.asarray(c.sum(axis=0)).ravel() for c in per_shard))
    whole = hashed_ngram_counts(texts)
    np.testing.assert_allclose(raw, fit_ngram_distribution(whole))
    target = fit_ngram_distribution(hashed_ngram_counts(sst2_dev))
    np.testing.assert_allclose(
        np.concatenate([log_importance_weights(c, target, raw) for c in per_shard]),
        log_importance_weights(whole, target, raw),
    )


# -- determinism, seeds, budgets ---------------------------------------------------------------


def test_topk_is_deterministic_and_breaks_ties_by_row(sst2_dev) -> None:
    texts = sst2_dev[:200] + sst2_dev[:200]  # every document twice: all scores tied in pairs
    ds = Dataset.from_dict({"text": texts})
    a = DSIR(target=sst2_dev[200:], keep=51).select(ds, CTX)
    b = DSIR(target=sst2_dev[200:], keep=51).select(ds, StepContext(seed=99, batch_size=64,
                                                                     show_progress=False))
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.scores[:200], a.scores[200:])
    # 51 kept: 25 tied pairs fully, and of the 26th pair only the earlier copy.
    assert a.keep[:200].sum() == 26 and a.keep[200:].sum() == 25


def test_sample_is_seeded_and_reproducible(pool, sst2_dev) -> None:
    ds, _ = pool
    run = lambda **kw: DSIR(target=sst2_dev, keep=300, mode="sample", **kw).select(  # noqa: E731
        ds, StepContext(seed=5, show_progress=False))
    a, b, c, d = run(seed=1), run(seed=1), run(seed=2), run()
    np.testing.assert_array_equal(a.keep, b.keep)
    assert not np.array_equal(a.keep, c.keep)
    assert d.stats["seed"] == 5  # seed=None: the run's seed
    np.testing.assert_array_equal(d.keep, run(seed=5).keep)
    # Sampling spreads the budget: it differs from top-k but still prefers high weights.
    top = DSIR(target=sst2_dev, keep=300).select(ds, CTX)
    assert 0 < (a.keep & top.keep).sum() < 300
    assert a.scores[a.keep].mean() > np.median(a.scores)


@pytest.mark.parametrize("keep, expected", [(100, 100), (0.05, 150), (0, 0), (1.0, 3000),
                                            (10**6, 3000)])
def test_keep_as_count_or_fraction(pool, sst2_dev, keep, expected) -> None:
    ds, _ = pool
    sel = DSIR(target=sst2_dev[:300], keep=keep).select(ds, CTX)
    assert sel.n_kept == expected


def test_min_tokens_marks_short_documents(sst2_dev) -> None:
    texts = ["great fun", "a"] + sst2_dev[:50]
    sel = DSIR(target=sst2_dev[50:], keep=1.0, min_tokens=3).select(
        Dataset.from_dict({"text": texts}), CTX)
    assert sel.reason_kind[0] == sel.reason_kind[1] == "dsir:too-short"
    short = np.array([len(t.split()) < 3 for t in texts])
    assert not sel.keep[short].any() and sel.keep[~short].all()
    assert sel.stats["too_short"] == short.sum()


def test_scores_do_not_depend_on_how_the_rows_are_cut(pool, sst2_dev) -> None:
    """The raw pool's distribution is fitted over every batch (the global pass) before any
    row is weighed: 37-row batches give the scores of one batch, exactly."""
    ds, _ = pool
    whole = DSIR(target=sst2_dev, keep=0.2).select(ds, StepContext(show_progress=False,
                                                                   batch_size=10_000))
    cut = DSIR(target=sst2_dev, keep=0.2).select(ds, StepContext(show_progress=False,
                                                                 batch_size=37))
    np.testing.assert_array_equal(whole.scores, cut.scores)
    np.testing.assert_array_equal(whole.keep, cut.keep)
    assert whole.stats == cut.stats


# -- features ----------------------------------------------------------------------------------


def test_counts_never_cross_documents_and_do_not_depend_on_batching(sst2_dev) -> None:
    texts = sst2_dev[:50] + ["", "single"]
    for tokenizer, hash_fn in [("words", "poly64"), ("wordpunct", "sha256")]:
        together = hashed_ngram_counts(texts, 5000, 3, tokenizer=tokenizer, hash_fn=hash_fn)
        for i in (0, 7, 50, 51):
            alone = hashed_ngram_counts([texts[i]], 5000, 3, tokenizer=tokenizer,
                                        hash_fn=hash_fn)
            assert (together[i] != alone[0]).nnz == 0
        n = np.array([len(NgramHasher(tokenizer=tokenizer).tokenize(t)) for t in texts])
        expected = n + np.maximum(n - 1, 0) + np.maximum(n - 2, 0)
        np.testing.assert_array_equal(np.asarray(together.sum(axis=1)).ravel(), expected)
    assert together.shape == (52, 5000) and together[50].nnz == 0


def _vector_tokens(hasher: NgramHasher, texts: list[str]) -> list[str]:
    joined = "\n".join(t.lower() for t in texts)
    starts, ends, _ = hasher._spans(joined)
    return [joined[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


@pytest.mark.parametrize("tokenizer", ["words", "wordpunct"])
def test_vectorised_tokens_equal_the_regex_tokenizer(shared_data: Path, tokenizer: str) -> None:
    """The NumPy tokeniser finds exactly the tokens of its regex specification, on real
    unicode-heavy prompts and on odd characters (separators, marks, digits, emoji)."""
    hasher = NgramHasher(tokenizer=tokenizer)
    prompts = []
    for path in sorted((shared_data / "sft" / "t0_train").glob("wiki_*.jsonl"))[:4]:
        with open(path, encoding="utf-8") as f:
            prompts += [json.loads(ln)["prompt"] for ln in f][:50]
    assert any(not p.isascii() for p in prompts)
    odd = ["km² ¼ — naïve café…", "a\x1cb\x1f, c", "İstanbul ΣΑΣ straße", "😀😀 ok!!",
           "\x00\x00 x", "tab\tv\x0bf\x0c\r\n", "under_score __x__", "e\u0301 \u200d",
           "lone \ud800 surrogate"]
    texts = prompts + odd
    expected = [w for t in texts for w in hasher.tokenize(t)]
    assert _vector_tokens(hasher, texts) == expected


HASHERS = {name: NgramHasher(tokenizer=name) for name in ("words", "wordpunct")}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=5))
def test_vectorised_tokens_on_any_text(texts: list[str]) -> None:
    for hasher in HASHERS.values():
        assert _vector_tokens(hasher, texts) == [w for t in texts for w in hasher.tokenize(t)]


def test_chunking_does_not_change_features(monkeypatch, sst2_dev) -> None:
    texts = sst2_dev[:300] + ["", "x"]
    for hash_fn, tokenizer in [("poly64", "words"), ("sha256", "wordpunct")]:
        whole = NgramHasher(hash_fn=hash_fn, tokenizer=tokenizer).features(texts)
        monkeypatch.setattr(dsir_module, "_CHUNK_CHARS", 500)  # ~5 sentences a chunk
        chunked = NgramHasher(hash_fn=hash_fn, tokenizer=tokenizer).features(texts)
        monkeypatch.undo()
        for a, b in zip(whole, chunked, strict=True):
            np.testing.assert_array_equal(a, b)


def test_reference_features_and_weights_match_p_lambda(shared_data: Path, sst2_dev) -> None:
    """With ``wordpunct`` + ``sha256`` our counts equal ``data_selection``'s bucket for bucket
    (on unicode-heavy instruction prompts too), and with its smoothing the weights agree."""
    hd = pytest.importorskip("data_selection.hashed_ngram_dsir")
    with open(shared_data / "sft" / "t0_train" / "wiki_bio_who.jsonl", encoding="utf-8") as f:
        prompts = [json.loads(ln)["prompt"] for ln in f][:40]
    texts = prompts + sst2_dev[:60] + ["", "km² ¼ — naïve café…", "a\x1cb\x1f, c"]
    ours = hashed_ngram_counts(texts, 10_000, 2, tokenizer="wordpunct", hash_fn="sha256")
    theirs = np.stack([hd.get_ngram_counts(t, n=2, num_buckets=10_000) for t in texts])
    np.testing.assert_array_equal(ours.toarray(), theirs)

    target = np.stack([hd.get_ngram_counts(t) for t in sst2_dev[100:]]).sum(0)
    raw = theirs.sum(0)
    log_diff = np.log(target / target.sum() + 1e-8) - np.log(raw / raw.sum() + 1e-8)
    smoothing = reference_smoothing(10_000)
    ours_w = log_importance_weights(ours, fit_ngram_distribution(target, smoothing=smoothing),
                                    fit_ngram_distribution(raw, smoothing=smoothing))
    np.testing.assert_allclose(ours_w, theirs @ log_diff, rtol=1e-9, atol=1e-6)


def test_fit_ngram_distribution() -> None:
    counts = np.array([3, 1, 0, 0])
    p = np.exp(fit_ngram_distribution(counts, smoothing=0.5))
    np.testing.assert_allclose(p, [0.5 * 0.75 + 0.125, 0.5 * 0.25 + 0.125, 0.125, 0.125])
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.exp(fit_ngram_distribution(np.zeros(4))), 0.25)
    dense = np.array([[1, 0, 0, 0], [2, 1, 0, 0]])
    np.testing.assert_allclose(fit_ngram_distribution(dense), fit_ngram_distribution(counts))
    with pytest.raises(ValueError):
        fit_ngram_distribution(counts, smoothing=0.0)


# -- targets -----------------------------------------------------------------------------------


def test_target_loaders(tmp_path: Path, sst2_dev) -> None:
    texts = sst2_dev[:5]
    # .txt follows the one rule of every input: a document per blank-line-separated block
    (tmp_path / "t.txt").write_text("\n\n".join(texts) + "\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t, "y": 1}) + "\n"
                                              for t in texts))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": t}) + "\n" for t in texts))
    (tmp_path / "t.json").write_text(json.dumps(texts))
    Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "t.parquet"))
    for name in ("t.txt", "t.jsonl", "t.parquet"):
        assert load_target_texts(tmp_path / name) == texts, name
    with pytest.raises(DataError, match=r"t\.json:1: a JSON array, not JSON Lines"):
        load_target_texts(tmp_path / "t.json")
    assert load_target_texts(str(tmp_path / "q.jsonl"), text_field="question") == texts
    assert load_target_texts(Dataset.from_dict({"text": texts})) == texts
    assert load_target_texts(tuple(texts)) == texts
    with pytest.raises(ValueError, match=r"q\.jsonl:1: missing text field 'text'"):
        load_target_texts(tmp_path / "q.jsonl")
    with pytest.raises(DataError, match=r"missing\.txt: no such file or folder"):
        load_target_texts(tmp_path / "missing.txt")
    ds = Dataset.from_dict({"text": sst2_dev[:30]})
    by_path = DSIR(target=str(tmp_path / "t.jsonl"), keep=3).select(ds, CTX)
    by_list = DSIR(target=texts, keep=3).select(ds, CTX)
    np.testing.assert_array_equal(by_path.scores, by_list.scores)


def test_empty_target_and_bad_settings_are_clear_errors() -> None:
    ds = Dataset.from_dict({"text": ["some text here"]})
    with pytest.raises(ValueError, match="no tokens"):
        DSIR(target=["", "  "]).select(ds, CTX)
    for bad in [dict(mode="best"), dict(smoothing=0), dict(keep=2.5), dict(keep=-1),
                dict(tokenizer="bpe"), dict(hash_fn="md5"), dict(ngrams=0), dict(num_buckets=0)]:
        with pytest.raises(ValueError):
            DSIR(target=["x"], **bad)


def test_empty_pool() -> None:
    sel = DSIR(target=["a movie"], keep=0.5).select(Dataset.from_dict({"text": []}), CTX)
    assert sel.n_rows == 0 and sel.n_kept == 0


def test_a_target_without_tokens_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    """Found when the step is prepared, before any row is mapped (exit 2 from the command)."""
    target = tmp_path / "target.jsonl"
    target.write_text('{"text": "!!! ..."}\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"target\.jsonl: the target has no tokens"):
        DSIR(target=str(target), keep=2).select(Dataset.from_dict({"text": ["a b c"]}), CTX)
