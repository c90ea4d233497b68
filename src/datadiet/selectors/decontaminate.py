"""Decontamination: drop training rows that share a long word n-gram with an evaluation set.

A fine-tuning set scraped or generated from the web often contains the benchmark it will be
evaluated on; a model trained on it reports a score it did not earn. The standard check (GPT-3,
Brown et al. 2020; 13 words, as used since for instruction data) is an exact n-gram overlap after
normalising case and punctuation: a 13-word run shared with a test question is almost never a
coincidence. Each row is compared on its whole text (instruction and response together), and the
removal reason names the evaluation file it overlaps, so the report says which benchmark leaked.

Hashing: words are the package's one word rule (:func:`datadiet.pipeline.text.words`), each word
hashed once (xxh3-64) and n-grams combined as a polynomial rolling hash in NumPy (wrapping
uint64 arithmetic); evaluation n-grams are held as one sorted array per file and looked up with
``np.isin``, so memory is 8 bytes per evaluation n-gram and no Python set of strings is built.
Rows with fewer than ``n`` words have no n-gram and are never flagged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import xxhash

from datadiet.pipeline.io import DataError, LoadedCorpus, load_corpus
from datadiet.pipeline.records import parse_fields
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext, register_step
from datadiet.pipeline.text import words

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["Decontaminate", "ngram_hashes"]

CONTAMINATED = "contaminated-by"
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the rolling hash stays a bijection per step


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Hashes of every ``n``-word window of ``text`` (empty when it has fewer words)."""
    ws = words(text)
    if len(ws) < n:
        return np.empty(0, dtype=np.uint64)
    w = np.fromiter((xxhash.xxh3_64_intdigest(t.encode("utf-8", "surrogatepass")) for t in ws), dtype=np.uint64, count=len(ws))
    m = len(ws) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MULTIPLIER + w[j : j + m]
    return h


def _eval_entry(entry: Any) -> dict[str, Any]:
    """An ``eval_sets`` entry as ``{"path", "fields", "text_field"}``; errors name the entry."""
    if isinstance(entry, str | os.PathLike):
        entry = {"path": str(entry)}
    if not isinstance(entry, Mapping) or "path" not in entry:
        raise ValueError(f"eval_sets: each entry is a path or {{path: ..., fields: ...}}, got {entry!r}")
    unknown = set(entry) - {"path", "fields", "text_field"}
    if unknown:
        raise ValueError(f"eval_sets: unknown key {sorted(unknown)[0]!r} in {dict(entry)!r}")
    path = Path(str(entry["path"])).expanduser()
    if not path.exists():
        raise ValueError(f"eval_sets: {path}: no such file or folder")
    text_field = str(entry.get("text_field", "text"))
    parse_fields(entry.get("fields"), text_field)  # validate now, not mid-run
    return {"path": str(path), "fields": entry.get("fields", "auto") or "auto",
            "text_field": text_field}


@register_step
class Decontaminate(Step):
    """Remove rows that share an ``n``-word sequence with any evaluation set.

    Args:
        eval_sets: evaluation files or folders in any format the reader takes (JSONL, Parquet,
            text, instruction formats), each a path or ``{path, fields, text_field}`` for
            records the reader cannot detect (``fields: {prompt: question, completion:
            answer}`` for GSM8K).
        n: words per n-gram (13, the GPT-3 rule).

    Removed rows: ``contaminated-by:<evaluation file>``. Scores: the fraction of the row's
    n-grams found in the evaluation sets (higher is *more* contaminated; 0 for kept rows).
    """

    name = "decontaminate"
    writes_score = True

    def __init__(self, *, eval_sets: Iterable[Any] = (), n: int = 13) -> None:
        entries = [eval_sets] if isinstance(eval_sets, str | os.PathLike | Mapping) else list(eval_sets)
        if not entries:
            raise ValueError("decontaminate needs eval_sets: a list of evaluation files")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self.eval_sets = [_eval_entry(e) for e in entries]
        self.n = n

    @staticmethod
    def _load_eval_set(entry: dict[str, Any], ctx: StepContext) -> LoadedCorpus:
        """Read one eval set; without its own ``fields``, the corpus's mapping is tried too.

        An eval set usually has the training data's shape (GSM8K test beside GSM8K train), so a
        spec's ``fields: {prompt: question, completion: answer}`` must reach it: detection runs
        first, and where it finds no known shape the corpus's own mapping is tried before the
        detection's error is raised.
        """
        def load(fields: Any) -> LoadedCorpus:
            return load_corpus(entry["path"], text_field=entry["text_field"], fields=fields,
                               work_dir=ctx.scratch("decontaminate"))

        corpus_format = ctx.record_format
        if entry["fields"] != "auto" or corpus_format is None or corpus_format.is_text:
            return load(entry["fields"])
        try:
            return load("auto")
        except DataError as detection_error:
            try:
                return load(corpus_format)
            except DataError:
                raise detection_error from None

    def _eval_ngrams(self, ctx: StepContext) -> list[tuple[str, np.ndarray]]:
        out = []
        for entry in self.eval_sets:
            loaded = self._load_eval_set(entry, ctx)
            parts = [ngram_hashes(t, self.n) for batch in ctx.iter_texts(
                loaded.dataset.rename_column(entry["text_field"], ctx.text_field)
                if entry["text_field"] != ctx.text_field else loaded.dataset,
                desc="decontaminate: eval n-grams") for t in batch]
            hashes = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)
            out.append((Path(entry["path"]).name, hashes))
        return out

    def prepare(self, ctx: StepContext) -> None:
        """The evaluation sets' n-grams, read once in the driver (8 bytes an n-gram); they
        travel with the step to every map."""
        self._evals = self._eval_ngrams(ctx)

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """Each row's first evaluation set it shares an n-gram with (its place in
        ``eval_sets``; -1: none) and the share of its n-grams found in any of them."""
        evals = getattr(self, "_evals", None)
        if evals is None:
            raise RuntimeError("decontaminate: prepare() must run before the map")
        texts = view.texts(batch).to_pylist()
        hit = np.full(len(texts), -1, dtype=np.int16)
        overlap = np.zeros(len(texts), dtype=np.float64)
        for row, text in enumerate(texts):
            grams = ngram_hashes(text or "", self.n)
            if not len(grams):
                continue
            found = np.zeros(len(grams), dtype=bool)
            for index, (_, hashes) in enumerate(evals):
                in_eval = np.isin(grams, hashes, assume_unique=False)
                if in_eval.any() and hit[row] < 0:
                    hit[row] = index
                found |= in_eval
            overlap[row] = found.mean()
        return {"eval_set": hit, "overlap": overlap}

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        return self.select_by_map(ds, ctx)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        names = [name for name, _ in self._evals]
        hit = np.asarray(features["eval_set"], dtype=np.int64)
        hit_file = np.array(["", *names], dtype=object)[hit + 1]
        per_file = dict.fromkeys(names, 0)  # two sets of one file name count together
        for i, name in enumerate(names):
            per_file[name] += int(np.count_nonzero(hit == i))
        stats = {"n": self.n, "eval_ngrams": {name: int(len(h)) for name, h in self._evals},
                 "removed_per_eval_set": per_file}
        return Selection.from_mask(hit < 0, CONTAMINATED, detail=hit_file,
                                   scores=np.asarray(features["overlap"], dtype=np.float64),
                                   stats=stats)
