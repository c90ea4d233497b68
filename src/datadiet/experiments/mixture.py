"""A raw pre-training corpus that looks like the real problem: a mixture with one wanted domain.

The end-to-end comparison needs a corpus where curation has something real to find. This one
mixes the shared data kit's text sources — encyclopedic WikiText-2 (the domain the model should
be good at), Shakespeare, Sherlock Holmes, GSM8K problems and T0 instruction prompts — and plants
exact copies, near copies and junk with known ground truth (:func:`plant_problems`).

Three WikiText-2 samples never overlap: the corpus's paragraphs and the DSIR *target* both come
from the validation file (disjoint paragraphs), and evaluation uses the *test* file, so no step
ever sees the text the model is scored on.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from datadiet.experiments.corpus import (
    generated_paragraphs,
    gutenberg_paragraphs,
    plant_problems,
    wikitext_paragraphs,
)
from datadiet.pipeline.io import atomic_write_text

__all__ = ["Mixture", "MixtureSizes", "build_mixture"]

#: Source name of the wanted domain; every other source is off-target.
TARGET_SOURCE = "wikitext"


@dataclass(frozen=True)
class MixtureSizes:
    """Documents drawn from each source (before planting copies and junk)."""

    wikitext: int = 900
    shakespeare: int = 900
    sherlock: int = 600
    gsm8k: int = 1500
    t0: int = 1500
    target: int = 300  # WikiText-2 valid paragraphs for the DSIR target, disjoint from the corpus
    eval_paragraphs: int = 200  # WikiText-2 *test* paragraphs, spread over the whole file
    exact_fraction: float = 0.08
    near_fraction: float = 0.08
    junk_fraction: float = 0.04

    @classmethod
    def quick(cls) -> MixtureSizes:
        """About a quarter of the default: seconds to curate on two cores."""
        return cls(wikitext=250, shakespeare=250, sherlock=160, gsm8k=400, t0=400, target=120,
                   eval_paragraphs=80)


@dataclass
class Mixture:
    """Paths of the written files and what went into them."""

    corpus: Path
    target: Path
    eval: Path
    documents: dict[str, int]  # per source, originals only
    characters: dict[str, int]  # per source, originals only
    planted: dict[str, int]

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _shakespeare_passages(path: Path, words_per_passage: int = 110) -> list[str]:
    """The plays cut into passages of whole lines of about ``words_per_passage`` words."""
    passages, lines, count = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        lines.append(line)
        count += len(line.split())
        if count >= words_per_passage and not line.strip():
            passages.append("\n".join(lines).strip())
            lines, count = [], 0
    return passages


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _t0_texts(folder: Path, n: int, rng: random.Random) -> list[str]:
    """``n`` T0 rows (prompt and completion as one text) drawn across all templates."""
    rows = [r for path in sorted(folder.glob("*.jsonl")) for r in _jsonl(path)[:40]]
    picked = rng.sample(rows, min(n, len(rows)))
    return [(r["prompt"].rstrip() + "\n" + r["completion"].replace("<|endoftext|>", "")).strip()
            for r in picked]


def _spread(items: list[str], n: int) -> list[str]:
    """``n`` items evenly spaced over the list (covers every article, not just the first)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _source_texts(data: Path | None, sizes: MixtureSizes,
                  rng: random.Random) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Texts per source, the DSIR target sample and the eval paragraphs."""
    if data is None:  # no data kit: grammar prose stands in for the wanted domain
        prose = generated_paragraphs(sizes.wikitext + sizes.target + sizes.eval_paragraphs, seed=1)
        target = prose[sizes.wikitext : sizes.wikitext + sizes.target]
        return {TARGET_SOURCE: prose[: sizes.wikitext]}, target, prose[-sizes.eval_paragraphs :]
    wiki = wikitext_paragraphs(data / "lm" / "wikitext2_valid.txt", min_words=30)
    rng.shuffle(wiki)
    if sizes.wikitext + sizes.target > len(wiki):
        raise ValueError(f"WikiText-2 valid has {len(wiki)} paragraphs; asked for "
                         f"{sizes.wikitext} + {sizes.target} (corpus + target)")
    target, wiki = wiki[: sizes.target], wiki[sizes.target : sizes.target + sizes.wikitext]
    shakespeare = _shakespeare_passages(data / "lm" / "tinyshakespeare.txt")
    sherlock = gutenberg_paragraphs(data / "lm" / "doyle_adventures.txt", min_words=40)
    gsm8k = [f"{r['question']}\n{r['answer']}" for r in _jsonl(data / "math" / "gsm8k_train.jsonl")]
    sources = {
        TARGET_SOURCE: wiki,
        "shakespeare": rng.sample(shakespeare, min(sizes.shakespeare, len(shakespeare))),
        "sherlock": rng.sample(sherlock, min(sizes.sherlock, len(sherlock))),
        "gsm8k": rng.sample(gsm8k, min(sizes.gsm8k, len(gsm8k))),
        "t0": _t0_texts(data / "sft" / "t0_train", sizes.t0, rng),
    }
    evaluation = _spread(wikitext_paragraphs(data / "lm" / "wikitext2_test.txt", min_words=30),
                         sizes.eval_paragraphs)
    return sources, target, evaluation


def build_mixture(out: str | os.PathLike, data: Path | None, sizes: MixtureSizes | None = None,
                  seed: int = 0) -> Mixture:
    """Write ``corpus.jsonl`` (with planted problems), ``target.jsonl`` and ``eval.jsonl``.

    Every corpus record carries ``source`` (which data set) and ``planted`` (``original``,
    ``exact``, ``near``, ``junk:<kind>``), so a report can say what curation kept of each.
    """
    sizes = sizes or MixtureSizes()
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources, target, evaluation = _source_texts(data, sizes, rng)
    records = [{"id": f"{name}-{i:05d}", "text": text, "source": name, "planted": "original",
                "source_id": f"{name}-{i:05d}"}
               for name, texts in sources.items() for i, text in enumerate(texts)]
    by_id = {r["id"]: r["source"] for r in records}
    planted = plant_problems(records, rng, exact_fraction=sizes.exact_fraction,
                             near_fraction=sizes.near_fraction, junk_fraction=sizes.junk_fraction)
    for rec in records:
        rec.setdefault("source", by_id.get(rec["source_id"], "junk"))
    mixture = Mixture(corpus=out / "corpus.jsonl", target=out / "target.jsonl",
                      eval=out / "eval.jsonl",
                      documents={k: len(v) for k, v in sources.items()},
                      characters={k: sum(map(len, v)) for k, v in sources.items()},
                      planted=planted)
    _write_jsonl(mixture.corpus, records)
    _write_jsonl(mixture.target, [{"id": f"target-{i:05d}", "text": t} for i, t in enumerate(target)])
    _write_jsonl(mixture.eval, [{"id": f"eval-{i:05d}", "text": t} for i, t in enumerate(evaluation)])
    return mixture


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
