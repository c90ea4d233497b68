"""Demonstration selection on small real data (SST-2, TREC, WikiText, Shakespeare, GSM8K).

Each strategy's defining property: kNN returns the nearest rows, MMR trades relevance for
diversity with lambda, DPP never picks a duplicate, Vote-k's sub-pool covers every cluster,
``balanced`` keeps the label mix even, and ``max_tokens`` is never exceeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datadiet.pipeline.models.embedding import Embedder
from datadiet.prompting.demos import STRATEGIES, DemoSelector, preset, vote_k
from datadiet.prompting.icl import read_labelled_lines


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def trec(shared_data: Path):
    data = read_labelled_lines(shared_data / "icl" / "trec" / "train.txt")
    return data.subset(range(0, 1200, 4))  # 300 questions, every coarse label present


@pytest.fixture(scope="module")
def sst2(shared_data: Path):
    data = read_labelled_lines(shared_data / "icl" / "sst2" / "train.txt")
    return data.subset(range(200))


def _cos(embedder: Embedder, texts: list[str]) -> np.ndarray:
    v = embedder.encode(texts)
    return v @ v.T


def test_knn_returns_the_nearest_rows(trec, embedder):
    sel = DemoSelector("knn", 5, embedder=embedder).fit(trec.texts, trec.labels)
    queries = ["What is the capital city of Australia ?", "Who wrote Hamlet ?",
               "How many feet are in a mile ?"]
    pool = embedder.encode(trec.texts)
    for query, demos in zip(queries, sel.select_batch(queries), strict=True):
        sims = pool @ embedder.encode([query])[0]
        expected = np.argsort(-sims, kind="stable")[:5]
        assert [d.index for d in demos] == expected.tolist()
        assert np.allclose([d.score for d in demos], sims[expected], atol=1e-5)


def test_the_query_is_never_its_own_demonstration(trec, embedder):
    query = trec.texts[7]
    for strategy in STRATEGIES:
        sel = DemoSelector(strategy, 4, embedder=embedder).fit(trec.texts, trec.labels)
        assert query not in [d.text for d in sel.select(query)], strategy
    sel = DemoSelector("knn", 4, embedder=embedder, exclude_query=False).fit(trec.texts, trec.labels)
    assert sel.select(query)[0].text == query


def test_mmr_trades_relevance_for_diversity_with_lambda(sst2, embedder):
    queries = ["a gorgeous , moving film with a superb cast",
               "the plot is dull and the jokes fall flat"]
    knn = DemoSelector("knn", 4, embedder=embedder).fit(sst2.texts, sst2.labels)
    relevance, redundancy = {}, {}
    for lam in (1.0, 0.7, 0.3, 0.0):
        sel = DemoSelector("mmr", 4, mmr_lambda=lam, embedder=embedder).fit(sst2.texts, sst2.labels)
        rel, red = [], []
        for q in queries:
            demos = sel.select(q)
            if lam == 1.0:
                assert [d.index for d in demos] == [d.index for d in knn.select(q)]
            sims = _cos(embedder, [d.text for d in demos])
            red.append(sims[np.triu_indices(4, 1)].mean())
            rel.append(np.mean([d.score for d in demos]))
        relevance[lam], redundancy[lam] = np.mean(rel), np.mean(red)
    lams = sorted(relevance, reverse=True)
    # less lambda: less relevant, and less similar to each other; float32 means of the same rows
    # differ by ~1e-8 between BLAS builds and thread counts, so equal picks compare within 1e-5
    assert all(relevance[a] >= relevance[b] - 1e-5 for a, b in zip(lams, lams[1:], strict=False))
    assert all(redundancy[a] >= redundancy[b] - 1e-5 for a, b in zip(lams, lams[1:], strict=False))
    assert relevance[1.0] > relevance[0.0] and redundancy[1.0] > redundancy[0.0]


def test_dpp_never_picks_a_duplicate(sst2, embedder):
    texts, labels = list(sst2.texts), list(sst2.labels)
    queries = ["an hour and a half of tedium", "a funny , warm and touching comedy"]
    pool = embedder.encode(texts)
    for q in queries:  # plant three copies of each of the query's 6 nearest rows
        near = np.argsort(-(pool @ embedder.encode([q])[0]))[:6]
        for i in near:
            texts += [texts[i]] * 3
            labels += [labels[i]] * 3
    knn = DemoSelector("knn", 4, embedder=embedder).fit(texts, labels)
    dpp = DemoSelector("dpp", 4, embedder=embedder).fit(texts, labels)
    for q in queries:
        assert len({d.text for d in knn.select(q)}) < 4  # the planted copies fool kNN
        picked = dpp.select(q)
        assert len(picked) == 4
        assert len({d.text for d in picked}) == 4


def test_dpp_prefers_relevant_rows(sst2, embedder):
    sel = DemoSelector("dpp", 4, embedder=embedder).fit(sst2.texts, sst2.labels)
    query = "a beautiful and moving film"
    sims = embedder.encode(sst2.texts) @ embedder.encode([query])[0]
    picked = [d.index for d in sel.select(query)]
    assert picked[0] == int(np.argmax(sims))  # first pick: the most relevant row
    assert np.mean(sims[picked]) > np.quantile(sims, 0.9)


def test_votek_covers_every_cluster(shared_data: Path, embedder):
    """Five sources of very different sizes: the voted sub-pool takes rows from all of them."""
    wiki = [ln.strip() for ln in (shared_data / "lm" / "wikitext2_valid.txt").read_text().splitlines()
            if len(ln.strip()) > 80 and not ln.strip().startswith("=")][:120]
    shakespeare = [ln.strip() for ln in (shared_data / "lm" / "tinyshakespeare.txt").read_text()
                   .splitlines() if len(ln.strip()) > 30][:60]
    trec = read_labelled_lines(shared_data / "icl" / "trec" / "train.txt").texts[:40]
    sst = read_labelled_lines(shared_data / "icl" / "sst2" / "train.txt").texts[:20]
    gsm = [json.loads(ln)["question"] for ln in
           (shared_data / "math" / "gsm8k_train.jsonl").read_text().splitlines()[:12]]
    sources = [wiki, shakespeare, trec, sst, gsm]
    texts = [t for s in sources for t in s]
    cluster = np.repeat(np.arange(len(sources)), [len(s) for s in sources])
    picks = vote_k(embedder.encode(texts), 12, neighbors=10)
    assert set(cluster[picks]) == set(range(len(sources)))
    assert len(set(picks.tolist())) == 12
    # uniform draws of the same size usually miss a small cluster
    rng = np.random.default_rng(0)
    covered = [len(set(cluster[rng.choice(len(texts), 12, replace=False)])) for _ in range(200)]
    assert np.mean(covered) < 4.8
    # the selector draws its demonstrations from that sub-pool only
    sel = DemoSelector("votek", 2, votek_size=12, votek_neighbors=10, embedder=embedder)
    sel.fit(texts, [str(c) for c in cluster])
    assert {d.index for d in sel.select("What is the capital of France ?")} <= set(sel.subpool.tolist())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_balanced_keeps_the_label_mix_even(strategy, trec, sst2, embedder):
    # TREC: a "how many" question's neighbours are nearly all NUM; balanced takes one per label
    sel = DemoSelector(strategy, 6, balanced=True, embedder=embedder).fit(trec.texts, trec.labels)
    for demos in sel.select_batch(["How many people live in Tokyo ?", "Who invented the radio ?"]):
        assert sorted(d.label for d in demos) == sorted(set(trec.labels))
    sel = DemoSelector(strategy, 4, balanced=True, embedder=embedder).fit(trec.texts, trec.labels)
    for demos in sel.select_batch(["How many miles is it to the moon ?"]):
        assert len({d.label for d in demos}) == 4
    sel = DemoSelector(strategy, 5, balanced=True, embedder=embedder).fit(sst2.texts, sst2.labels)
    for demos in sel.select_batch(["a masterpiece , wonderful and wise", "awful , just awful"]):
        counts = np.bincount([int(d.label) for d in demos], minlength=2)
        assert sorted(counts.tolist()) == [2, 3]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_token_budget_is_never_exceeded(strategy, sst2, embedder):
    from datadiet.pipeline.models.tokenizer import load_tokenizer

    tok = load_tokenizer()
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    template = preset("sentiment", ["0", "1"])
    for budget in (30, 90, 200):
        sel = DemoSelector(strategy, None, max_tokens=budget, template=template, count_tokens=count,
                           embedder=embedder).fit(sst2.texts, sst2.labels)
        for query in ("a film of quiet power", "the worst movie of the year"):
            demos = sel.select(query)
            block = "".join(template.separator + template.format_demo(d.text, d.label) for d in demos)
            used = sum(count(template.separator + template.format_demo(d.text, d.label)) for d in demos)
            assert used <= budget
            assert count(block) <= budget  # counted whole, as the prompt has it
            if budget == 200:
                assert len(demos) >= 3  # "as many as fit", not one
            # the rankings walk the whole pool under a budget: nothing left out would still fit
            cheapest = min(count(template.separator + template.format_demo(t, y))
                           for t, y in zip(sst2.texts, sst2.labels, strict=True)
                           if t not in {d.text for d in demos} and t != query)
            if strategy in ("random", "knn", "bm25"):
                assert budget - used < cheapest


def test_k_is_a_cap_under_a_budget(sst2, embedder):
    sel = DemoSelector("knn", 2, max_tokens=1000, embedder=embedder).fit(sst2.texts, sst2.labels)
    assert len(sel.select("a fine film")) == 2


def test_bm25_ranks_by_word_overlap(trec):
    sel = DemoSelector("bm25", 3).fit(trec.texts, trec.labels)
    demos = sel.select("What does NASA stand for ?")
    assert "NASA" in demos[0].text or "stand for" in demos[0].text
    assert demos[0].score >= demos[1].score >= demos[2].score > 0


def test_random_is_reproducible_per_query_and_seed(trec):
    a = DemoSelector("random", 4, seed=1).fit(trec.texts, trec.labels)
    b = DemoSelector("random", 4, seed=2).fit(trec.texts, trec.labels)
    q = "Where is Belize located ?"
    assert [d.index for d in a.select(q)] == [d.index for d in a.select_batch(["x", q])[1]]
    assert [d.index for d in a.select(q)] != [d.index for d in b.select(q)]


def test_clear_errors(trec):
    with pytest.raises(ValueError, match="pool is empty"):
        DemoSelector("random", 1).fit([], [])
    with pytest.raises(ValueError, match="larger than the pool"):
        DemoSelector("random", 5).fit(trec.texts[:3], trec.labels[:3])
    with pytest.raises(ValueError, match="unknown strategy"):
        DemoSelector("nearest", 2)
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        DemoSelector("random", 1).fit(trec.texts[:3], trec.labels[:2])
    with pytest.raises(RuntimeError, match="fit"):
        DemoSelector("random", 1).select("q")
