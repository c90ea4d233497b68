"""In-context learning evaluation: which demonstrations, in which order, win on your data.

``ICLEvaluator(template).evaluate(selector, texts, labels, order=...)`` predicts each test query's
label by comparing the label words' log-probabilities after its few-shot prompt (one cached pass
per prompt through the one LM scorer) and reports accuracy, macro-F1, prompt tokens and time.

``calibrate=True`` is contextual calibration (Zhao et al. 2021): the same prompt with the query
replaced by content-free inputs ("N/A", "", "[MASK]") shows the prompt's own bias over the labels;
dividing the query's label probabilities by that average bias removes it. The content-free
queries share the prompt's demonstrations, so they reuse its cached prefix and cost a few tokens.

The ``datadiet icl-eval`` sub-command (``add_icl_parser``) is a thin wrapper over this.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datadiet.pipeline.cli_args import fraction, non_negative_int, positive_int
from datadiet.pipeline.io import DataError, SpecError, load_corpus
from datadiet.pipeline.models.scoring import LMScorer
from datadiet.prompting.demos.label_scores import LabelScorer, label_probabilities
from datadiet.prompting.demos.ordering import ORDERINGS, DemoOrderer
from datadiet.prompting.demos.selection import STRATEGIES, Demo, DemoSelector
from datadiet.prompting.demos.templates import (
    PRESET_NAMES,
    PromptTemplate,
    build_prompts,
    load_template,
)

CONTENT_FREE = ("N/A", "", "[MASK]")
LABELLED_LINE_SUFFIXES = (".txt", ".txt.gz", ".tsv", ".tsv.gz")


# -- labelled data ------------------------------------------------------------------------------


@dataclass
class LabelledData:
    """Texts with their labels; ``where[i]`` names row ``i``'s place for error messages."""

    texts: list[str]
    labels: list[str]
    where: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: Sequence[int]) -> LabelledData:
        return LabelledData([self.texts[i] for i in rows], [self.labels[i] for i in rows],
                            [self.where[i] for i in rows], self.source)


def read_labelled_lines(path: str | Path, *, fine_labels: bool = False) -> LabelledData:
    """``LABEL TEXT`` per line (SST-2, TREC as Zhao et al. 2021 ship them).

    A label written ``COARSE:fine`` (TREC) is read as ``COARSE`` unless ``fine_labels``. Lines
    that are blank are skipped; a line with no text after its label is an error naming it.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    texts, labels, where = [], [], []
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start}") from None
                if not line:
                    continue
                parts = line.split(None, 1)
                if len(parts) < 2:
                    raise DataError(f"{path}:{lineno}: expected 'LABEL TEXT', got {line[:60]!r}")
                label = parts[0] if fine_labels else parts[0].split(":", 1)[0]
                texts.append(parts[1])
                labels.append(label)
                where.append(f"{path}:{lineno}")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    if not texts:
        raise DataError(f"{path}: no labelled rows (empty file)")
    return LabelledData(texts, labels, where, str(path))


def read_labelled(source: str | Path, *, text_field: str = "text", label_field: str = "label",
                  fine_labels: bool = False) -> LabelledData:
    """Labelled rows from ``LABEL TEXT`` lines (.txt/.tsv) or any format the package reader reads.

    JSONL, Parquet, saved datasets and hub ids go through :func:`datadiet.pipeline.io.load_corpus`
    (the one reader per format) with ``label_field`` carried along.
    """
    path = Path(source)
    if path.is_file() and path.name.endswith(LABELLED_LINE_SUFFIXES):
        return read_labelled_lines(path, fine_labels=fine_labels)
    corpus = load_corpus(source, text_field=text_field, keep_fields=[label_field])
    ds = corpus.dataset
    if label_field not in ds.column_names:
        raise DataError(f"{source}: no label field {label_field!r} (fields: "
                        f"{', '.join(ds.column_names)}); set --label-field")
    texts, labels = ds[text_field], ds[label_field]
    where = [f"{source}: row {i + 1} (id {rid})" for i, rid in enumerate(ds["id"])]
    for i, label in enumerate(labels):
        if label is None:
            raise DataError(f"{where[i]}: missing label field {label_field!r}")
    return LabelledData(list(texts), list(labels), where, str(source))


def check_labels(data: LabelledData, allowed: Sequence[str]) -> None:
    """Every row's label must be one of ``allowed``; the first bad one is named with its place."""
    ok = set(allowed)
    for label, where in zip(data.labels, data.where, strict=True):
        if label not in ok:
            raise DataError(f"{where}: label {label!r} is not one of --labels {','.join(allowed)}")


# -- evaluation ---------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per query: the predicted label, label scores, prompt tokens.

    ``scores`` are label log-probs, or with calibration ``log p(label) - log bias(label)``
    (``bias``: the prompt's mean label distribution over the content-free inputs).
    """

    labels: list[str]
    scores: np.ndarray
    prompt_tokens: np.ndarray
    prompts: list[str] = field(default_factory=list)
    bias: np.ndarray | None = None
    raw: np.ndarray | None = None  # label log-probs before calibration


@dataclass
class ICLResult:
    accuracy: float
    macro_f1: float
    mean_prompt_tokens: float
    seconds: float
    n: int
    predictions: list[str]
    gold: list[str]
    demos: list[list[Demo]]

    def summary(self) -> dict[str, Any]:
        return {"accuracy": round(self.accuracy, 4), "macro_f1": round(self.macro_f1, 4),
                "mean_prompt_tokens": round(self.mean_prompt_tokens, 1),
                "seconds": round(self.seconds, 2), "n": self.n}


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Mean F1 over ``labels`` (a label never predicted nor present scores 0, as sklearn's)."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(gold), list(predicted), labels=list(labels), average="macro",
                          zero_division=0))


class ICLEvaluator:
    """Few-shot prediction and evaluation with one template on one model.

    Args:
        template: the prompt template (its verbalizers define the labels).
        scorer: the one LM scorer, or ``model`` to build one (default SmolLM2-135M-Instruct).
        embedder: shared with selectors and ``similar_last`` ordering.
        max_length: longest prompt (tokens) the scorer accepts.
    """

    def __init__(self, template: PromptTemplate, *, scorer: LMScorer | None = None,
                 model: str | None = None, embedder: Any = None, max_length: int = 4096) -> None:
        if not template.verbalizers:
            raise SpecError("the template has no labels: give it verbalizers (or use with_labels)")
        self.template = template
        self.scorer = scorer or LMScorer(model, max_length=max_length, stage="icl")
        self.embedder = embedder
        self.labels = template.labels
        self.label_scorer = LabelScorer(
            self.scorer, [template.label_continuation(y) for y in self.labels])

    def predict(self, queries: Sequence[str], demos: Sequence[Sequence[Demo]], *,
                calibrate: bool = False, compress_rate: float | None = None) -> Predictions:
        """Predict a label for each query given its (ordered) demonstrations."""
        prompts = build_prompts(self.template, demos, queries, compress_rate=compress_rate,
                                model=self.scorer)
        # queries with the same prefix (same demos, or zero-shot) share one cached prefix pass
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.prefix, []).append(i)
        prefix_texts = list(groups)
        prefix_ids = [self.label_scorer.prefix_ids(p) for p in prefix_texts]
        limit = self.scorer.max_length - max(len(x) for x in self.label_scorer.label_ids)
        suffix_texts = []
        for prefix in prefix_texts:
            rows = [prompts[i].suffix for i in groups[prefix]]
            if calibrate:
                sep = self.template.separator if prefix else ""
                rows += [sep + self.template.format_query(cf) for cf in CONTENT_FREE]
            suffix_texts.append(rows)
        flat = iter(self.label_scorer.encode([s for rows in suffix_texts for s in rows]))
        suffix_ids = [[next(flat) for _ in rows] for rows in suffix_texts]
        n = len(queries)
        scores = np.zeros((n, len(self.labels)))
        raw = np.zeros((n, len(self.labels)))
        bias = np.zeros((n, len(self.labels))) if calibrate else None
        tokens = np.zeros(n, dtype=np.int64)
        for g, (pids, sids) in enumerate(zip(prefix_ids, suffix_ids, strict=True)):
            for i, s in zip(groups[prefix_texts[g]], sids, strict=False):
                tokens[i] = len(pids) - 1 + len(s)
                if len(pids) + len(s) > limit:
                    raise SpecError(f"a prompt has {tokens[i]} tokens, more than the model's "
                                     f"limit {limit}: use fewer demonstrations or max_tokens")
        logprobs = self.label_scorer.score(prefix_ids, suffix_ids)
        for g, lp in enumerate(logprobs):
            rows = groups[prefix_texts[g]]
            raw[rows] = lp[: len(rows)]
            if bias is not None:
                bias[rows] = label_probabilities(lp[len(rows):]).mean(axis=0)
                lp = np.log(label_probabilities(lp[: len(rows)])) - np.log(bias[rows])
            scores[rows] = lp[: len(rows)]
        predicted = [self.labels[j] for j in scores.argmax(axis=1)]
        return Predictions(predicted, scores, tokens, [p.text for p in prompts], bias, raw)

    def orderer(self, method: str, pool_texts: Sequence[str], *, probes: int = 8, seed: int = 0,
                max_orderings: int = 24, probe_cache: dict | None = None) -> DemoOrderer:
        """A :class:`DemoOrderer` wired to this evaluator (probes: a seeded sample of the pool)."""
        probe_texts: list[str] = []
        if method in ("globale", "locale"):
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(pool_texts), size=min(probes, len(pool_texts)), replace=False)
            probe_texts = [pool_texts[i] for i in sorted(pick)]
        return DemoOrderer(method, embedder=self.embedder, label_scorer=self.label_scorer,
                           template=self.template, probes=probe_texts,
                           max_orderings=max_orderings, seed=seed, probe_cache=probe_cache)

    def evaluate(self, selector: DemoSelector, texts: Sequence[str], labels: Sequence[str], *,
                 order: str = "as_selected", calibrate: bool = False,
                 compress_rate: float | None = None, probes: int = 8, seed: int = 0,
                 max_orderings: int = 24, batch_size: int = 64) -> ICLResult:
        """Accuracy and macro-F1 of ``selector`` + ``order`` on labelled test rows.

        ``seconds`` covers selection, ordering and prediction (model loading and pool indexing
        are not counted: they happen once per pool, not per query).
        """
        texts, labels = list(texts), [str(x) for x in labels]
        unknown = sorted(set(labels) - set(self.labels))
        if unknown:
            raise SpecError(f"test labels {unknown} are not among the template's {self.labels}")
        orderer = self.orderer(order, selector.texts, probes=probes, seed=seed,
                               max_orderings=max_orderings)
        start = time.perf_counter()
        predicted: list[str] = []
        tokens: list[int] = []
        chosen: list[list[Demo]] = []
        for a in range(0, len(texts), batch_size):
            batch = texts[a : a + batch_size]
            demos = orderer.order_batch(selector.select_batch(batch), batch)
            out = self.predict(batch, demos, calibrate=calibrate, compress_rate=compress_rate)
            predicted += out.labels
            tokens += out.prompt_tokens.tolist()
            chosen += demos
        seconds = time.perf_counter() - start
        accuracy = float(np.mean([p == g for p, g in zip(predicted, labels, strict=True)])) if texts else 0.0
        return ICLResult(accuracy, macro_f1(labels, predicted, self.labels),
                         float(np.mean(tokens)) if tokens else 0.0, seconds, len(texts),
                         predicted, labels, chosen)


# -- CLI ----------------------------------------------------------------------------------------


def add_icl_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``datadiet icl-eval`` on an argparse sub-parsers object."""
    p = sub.add_parser(
        "icl-eval", help="evaluate few-shot demonstrations (selection x order) on labelled data",
        description="Predict TEST labels with K demonstrations from TRAIN, chosen by STRATEGY "
        "and ordered by ORDER; prints accuracy, macro-F1, prompt tokens and seconds (last line "
        "JSON). TRAIN/TEST: 'LABEL TEXT' lines (.txt), or JSONL/Parquet/saved dataset/hub id "
        "with text and label fields.")
    p.add_argument("--train", required=True, help="the demonstration pool")
    p.add_argument("--test", required=True, help="the rows to predict")
    p.add_argument("--labels", required=True,
                   help="comma-separated label values (VALUE=WORD to set a verbalizer)")
    p.add_argument("--strategy", default="knn", choices=STRATEGIES)
    p.add_argument("--k", type=non_negative_int, default=4,
                   help="demonstrations per query (0 = zero-shot)")
    p.add_argument("--order", default="as_selected", choices=ORDERINGS)
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate a fixed random subset of this many test rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="causal LM (HF id or folder; default SmolLM2)")
    p.add_argument("--calibrate", action="store_true", help="contextual calibration")
    p.add_argument("--template", default="generic",
                   help=f"preset ({', '.join(PRESET_NAMES)}, generic) or a JSON file")
    p.add_argument("--compress-rate", type=fraction, default=None,
                   help="compress the demonstrations to this fraction of their tokens")
    p.add_argument("--balanced", action="store_true", help="keep the demonstrations' label mix even")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="as many demonstrations (up to K) as fit this many tokens")
    p.add_argument("--mmr-lambda", type=float, default=0.5)
    p.add_argument("--probes", type=positive_int, default=8, help="probe queries for globale/locale")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--fine-labels", action="store_true",
                   help="keep 'COARSE:fine' labels whole (default: the COARSE part)")
    p.set_defaults(func=run_icl_eval)
    return p


def _label_spec(raw: str) -> list[str]:
    items = [x.strip() for x in raw.split(",") if x.strip()]
    if not items:
        raise SpecError("--labels: give the label values, e.g. --labels 0,1")
    return items


def fixed_subset(n: int, limit: int | None) -> list[int]:
    """A fixed random subset of ``limit`` rows (the same for every seed, strategy and order)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise SpecError(f"--limit must be at least 1, got {limit}")
    return sorted(np.random.default_rng(0).permutation(n)[:limit].tolist())


def run_icl_eval(args: argparse.Namespace) -> int:
    """Run ``datadiet icl-eval``; every input is checked before a model loads."""
    spec = _label_spec(args.labels)
    template = load_template(args.template if args.template != "generic" else
                             PromptTemplate(name="generic"), spec)
    allowed = template.labels
    train = read_labelled(args.train, text_field=args.text_field, label_field=args.label_field,
                          fine_labels=args.fine_labels)
    test = read_labelled(args.test, text_field=args.text_field, label_field=args.label_field,
                         fine_labels=args.fine_labels)
    check_labels(train, allowed)
    check_labels(test, allowed)
    if args.k > len(train):
        raise SpecError(f"--k {args.k} is larger than the pool ({len(train)} rows in {args.train})")
    test = test.subset(fixed_subset(len(test), args.limit))
    selector = DemoSelector(args.strategy, args.k, balanced=args.balanced,
                            max_tokens=args.max_tokens, template=template,
                            mmr_lambda=args.mmr_lambda, seed=args.seed)  # validates first
    evaluator = ICLEvaluator(template, model=args.model)
    selector.count_tokens = evaluator.scorer.count_tokens  # budgets in the model's tokens
    selector.fit(train.texts, train.labels)
    evaluator.embedder = evaluator.embedder or selector.embedder
    result = evaluator.evaluate(selector, test.texts, test.labels, order=args.order,
                                calibrate=args.calibrate, compress_rate=args.compress_rate,
                                probes=args.probes, seed=args.seed)
    print(f"icl-eval: {args.strategy} k={args.k} order={args.order} template={template.name}"
          f"{' calibrated' if args.calibrate else ''} on {len(test)} rows of {args.test}")
    counts = {y: result.predictions.count(y) for y in allowed}
    print(f"  accuracy {result.accuracy:.3f}  macro-F1 {result.macro_f1:.3f}  "
          f"prompt tokens {result.mean_prompt_tokens:.1f}  {result.seconds:.1f}s  predicted {counts}")
    print(json.dumps(result.summary()))
    return 0
