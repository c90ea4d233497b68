"""ICL scoring, ordering, calibration, compression and the CLI with the real offline SmolLM2.

Kept small (a handful of short SST-2/TREC rows): SmolLM2 scores ~300 tokens/s on two cores.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from datadiet.cli import main
from datadiet.prompting.demos import Demo, DemoOrderer, LabelScorer, build_prompt, preset
from datadiet.prompting.demos.label_scores import label_probabilities
from datadiet.prompting.demos.ordering import entropy
from datadiet.prompting.icl import ICLEvaluator, read_labelled, read_labelled_lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sst2(shared_data: Path):
    data = read_labelled_lines(shared_data / "icl" / "sst2" / "train.txt")
    short = [i for i, t in enumerate(data.texts) if len(t) < 60]
    return data.subset(short[:40])


@pytest.fixture(scope="module")
def template():
    return preset("sentiment", ["0", "1"])


def _plain_label_logprobs(scorer, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Independent computation: score each whole "prompt + label" string, no cache, no padding
    tricks (one batched ``score_ids`` call), and sum the label's token log-probs."""
    ids = [e["ids"] for e in scorer.encode([p + c for p, c in pairs])]
    n_label = [len(e["ids"]) - 1 for e in scorer.encode([c for _, c in pairs])]
    scores = scorer.score_ids(ids)
    return np.asarray([float(s[-n:].sum()) for s, n in zip(scores, n_label, strict=True)])


def test_cached_label_scores_equal_plain_scoring(scorer, sst2):
    continuations = [" positive", " negative", " rather mixed"]  # the last is three tokens
    ls = LabelScorer(scorer, continuations, tokens_per_pass=200)  # small: several chunks
    prefixes = ["", "Review: " + sst2.texts[0] + "\nSentiment: positive", "Classify the reviews."]
    suffixes = [["Review: " + sst2.texts[1] + "\nSentiment:"],
                ["\n\nReview: " + t + "\nSentiment:" for t in sst2.texts[2:5]],
                ["\n\nReview: N/A\nSentiment:", "\n\nReview: " + sst2.texts[5] + "\nSentiment:"]]
    got = ls.score_texts(prefixes, suffixes)
    pairs = [(p + s, c) for p, group in zip(prefixes, suffixes, strict=True) for s in group
             for c in continuations]
    ref = _plain_label_logprobs(scorer, pairs).reshape(-1, 3)
    assert [g.shape for g in got] == [(len(g), 3) for g in suffixes]
    assert np.allclose(np.concatenate(got), ref, atol=1e-3)


def test_globale_and_locale_pick_the_best_ordering_by_brute_force(scorer, sst2, template):
    demos = [Demo(i, sst2.texts[i], sst2.labels[i]) for i in (0, 1, 2)]
    probes = sst2.texts[10:15]
    conts = [template.label_continuation(y) for y in template.labels]
    ls = LabelScorer(scorer, conts)
    brute_global, brute_local = [], []
    perms = list(itertools.permutations(range(3)))
    pairs = [(build_prompt(template, [demos[i] for i in perm], probe).text, c)
             for perm in perms for probe in probes for c in conts]
    all_lp = _plain_label_logprobs(scorer, pairs).reshape(len(perms), len(probes), len(conts))
    for lp in all_lp:
        probs = label_probabilities(lp)
        hist = np.bincount(probs.argmax(1), minlength=2)
        brute_global.append(entropy(hist / hist.sum()))
        brute_local.append(np.mean([entropy(p) for p in probs]))
    assert len(set(np.round(brute_local, 6))) > 1  # the orderings really differ
    for method, brute in (("globale", brute_global), ("locale", brute_local)):
        orderer = DemoOrderer(method, label_scorer=ls, template=template, probes=probes)
        chosen = orderer.order(demos, "a query")
        best = perms[int(np.argmax(brute))]
        assert [d.index for d in chosen] == [demos[i].index for i in best], method
        assert np.allclose(orderer.last_entropies, brute, atol=1e-3)


def test_calibration_moves_a_biased_prediction(scorer, sst2, template, shared_data):
    evaluator = ICLEvaluator(template, scorer=scorer)
    positives = [Demo(i, t, y) for i, (t, y) in enumerate(zip(sst2.texts, sst2.labels, strict=True))
                 if y == "1"][:4]
    test = read_labelled_lines(shared_data / "icl" / "sst2" / "test.txt")
    negatives = [t for t, y in zip(test.texts, test.labels, strict=True) if y == "0" and len(t) < 50][:24]
    demos = [positives] * len(negatives)  # every demonstration positive: a prompt biased to "1"
    out = evaluator.predict(negatives, demos, calibrate=True)  # raw scores come along
    pos = template.labels.index("1")
    assert out.bias is not None and (out.bias[:, pos] > 0.5).all()
    p_plain = label_probabilities(out.raw)[:, pos]
    p_cal = label_probabilities(out.scores)[:, pos]
    assert np.allclose(out.scores, np.log(label_probabilities(out.raw)) - np.log(out.bias))
    assert (p_cal < p_plain).all()
    plain_labels = [template.labels[j] for j in out.raw.argmax(1)]
    assert out.labels.count("0") > plain_labels.count("0")  # some predictions flip to negative
    assert np.array_equal(out.prompt_tokens[:2],
                          evaluator.predict(negatives[:2], demos[:2]).prompt_tokens)


def test_compression_shortens_the_demonstrations_only(scorer, sst2, template, shared_data):
    long = read_labelled_lines(shared_data / "icl" / "sst2" / "train.txt")
    demos = [Demo(i, long.texts[i], long.labels[i]) for i in range(8)]
    query = sst2.texts[20]
    full = build_prompt(template, demos, query)
    short = build_prompt(template, demos, query, compress_rate=0.3, model=scorer)
    assert short.compressed and short.suffix == full.suffix  # the query, untouched
    assert short.prefix.startswith(template.instruction)
    body = short.prefix[len(template.instruction):]
    # a demonstration is dropped whole or keeps its own answer: cut the prefix at each answer,
    # find the demonstration each remnant came from, and check the answer is that one's label
    pieces = re.split(r"\nSentiment: (\w+)", body)
    remnants, answers = pieces[0:-1:2], pieces[1::2]
    assert 0 < len(answers) < len(demos)  # some demonstrations were dropped, not all
    for remnant, answer in zip(remnants, answers, strict=True):
        words = set(re.findall(r"\w+", remnant.lower()))
        source = max(demos, key=lambda d: len(words & set(re.findall(r"\w+", d.text.lower()))))
        assert answer == template.verbalize(source.label), (remnant, answer, source)
    n_full, n_short = scorer.count_tokens(full.prefix), scorer.count_tokens(short.prefix)
    assert n_short <= 0.31 * n_full  # the budget is counted on the compressor's own layout


def test_labelled_readers(tmp_path, shared_data):
    trec = read_labelled_lines(shared_data / "icl" / "trec" / "test.txt")
    assert set(trec.labels) == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert trec.where[0].endswith("test.txt:1")
    fine = read_labelled_lines(shared_data / "icl" / "trec" / "test.txt", fine_labels=True)
    assert ":" in fine.labels[0]
    path = tmp_path / "rows.jsonl"
    path.write_text('{"sentence": "good", "y": 1}\n{"sentence": "bad", "y": 0}\n')
    data = read_labelled(path, text_field="sentence", label_field="y")
    assert data.texts == ["good", "bad"] and data.labels == ["1", "0"]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_end_to_end(tmp_path, shared_data, capsys):
    lines = (shared_data / "icl" / "trec" / "train.txt").read_text().splitlines()
    train = _write_lines(tmp_path / "train.txt", [ln for ln in lines if len(ln) < 50][:30])
    test_lines = (shared_data / "icl" / "trec" / "test.txt").read_text().splitlines()
    test = _write_lines(tmp_path / "test.txt", [ln for ln in test_lines if len(ln) < 45][:6])
    rc = main(["icl-eval", "--train", str(train), "--test", str(test), "--labels",
               "ABBR,DESC,ENTY,HUM,LOC,NUM", "--template", "question", "--strategy", "knn",
               "--k", "2", "--order", "similar_last", "--calibrate", "--limit", "4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    result = json.loads(out[-1])
    assert set(result) == {"accuracy", "macro_f1", "mean_prompt_tokens", "seconds", "n"}
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert 20 < result["mean_prompt_tokens"] < 200


def test_cli_errors_exit_2_before_loading_a_model(tmp_path, capsys):
    train = _write_lines(tmp_path / "train.txt", ["1 a fine film", "0 a dull film", "2 huh"])
    test = _write_lines(tmp_path / "test.txt", ["1 lovely"])
    base = ["icl-eval", "--test", str(test), "--labels", "0,1", "--template", "sentiment"]
    assert main([*base, "--train", str(train)]) == 2
    assert f"{train}:3: label '2' is not one of --labels 0,1" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main([*base, "--train", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    small = _write_lines(tmp_path / "small.txt", ["1 a fine film", "0 a dull film"])
    assert main([*base, "--train", str(small), "--k", "3"]) == 2
    assert "larger than the pool (2 rows" in capsys.readouterr().err
    for flag, value in (("--k", "-1"), ("--compress-rate", "0"), ("--limit", "0")):
        with pytest.raises(SystemExit) as exc:  # argparse: usage + exit 2
            main([*base, "--train", str(small), flag, value])
        assert exc.value.code == 2
    capsys.readouterr()
    assert main([*base, "--train", str(small), "--k", "1", "--strategy", "mmr",
                 "--mmr-lambda", "2"]) == 2
    assert "mmr_lambda must be in [0, 1]" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "1"}\n{"text": "no label"}\n')
    assert main([*base, "--train", str(bad)]) == 2
    assert "row 2" in capsys.readouterr().err
