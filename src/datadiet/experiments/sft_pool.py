"""An instruction pool that looks like real fine-tuning data: clean rows, long good answers and the
problems real pools have, planted in stated proportions with their ground truth kept.

Why planted: a clean pool gives selection nothing to remove, so a method "wins" only by noise.
Real instruction sets (scraped, distilled, merged from several releases) carry near-duplicate
instructions, responses attached to the wrong row, answers cut off mid-sentence, refusals and
hedges, echoes of the prompt and rows that are not instruction data at all. Each of these is
planted here from the shared data kit, with the proportions in :class:`PoolMix`, and the pool's
ids say nothing about which rows were spoiled (the ground truth lives in a separate file, so no
method can read it).

Sources: T0 prompt/completion rows (rows 40-99 of every template; the pre-training mixture
uses rows 0-39, evaluation rows 100-119), GSM8K train problems with their full worked solutions
(the *long, high-quality* minority; calculator annotations removed, the final ``#### N`` turned
into a sentence), and Sherlock Holmes / Shakespeare / WikiText-2 paragraphs for the off-topic
rows. The held-out evaluation set is clean: T0 rows 100-119 and GSM8K *test* problems, in the
pool's clean proportions.
"""

from __future__ import annotations

import collections
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datadiet.experiments.corpus import gutenberg_paragraphs, wikitext_paragraphs
from datadiet.pipeline.io import atomic_write_json, atomic_write_text, iter_jsonl

__all__ = ["PLANTED_KINDS", "PoolFiles", "PoolMix", "build_sft_pool", "planted_removed"]

END_OF_TEXT = "<|endoftext|>"
#: Rows of each T0 template file: the pre-training mixture takes 0-39, the pool 40-99,
#: evaluation 100-119, so no row is in two of them.
T0_POOL_ROWS, T0_EVAL_ROWS = slice(40, 100), slice(100, 120)
#: T0 prompts longer than this are left out: a passage of several thousand characters does not
#: fit the small trainee's window, and cut, its answer would not follow from what is seen.
MAX_PROMPT_CHARS = 700
#: Kinds of planted problems (the rows a selection should remove).
PLANTED_KINDS = ("near_duplicate", "swapped", "truncated", "generic", "restated", "off_topic")
#: Non-answers as assistants and crowd workers write them (deliberately not the selector's
#: pattern list: the rules in ``response_rules`` are tested against these, not copied from them).
GENERIC_ANSWERS = (
    "I'm not sure about that. Could you give me more details?",
    "I don't know.",
    "Sorry, I can't help with that.",
    "As an AI language model, I cannot answer this question.",
    "That's a great question! There are many possible answers, and it depends on the context.",
    "It depends on many factors.",
    "I am unable to provide an answer to this request.",
    "Could you please clarify what you mean?",
    "I would need more information to answer that.",
    "There is no single correct answer to this question.",
    "Hmm, let me think. I'm not certain, to be honest.",
    "I cannot assist with that request.",
)
RESTATE_PREFIXES = ("", "", "You asked: ", "The question is: ", "Question: ")


@dataclass(frozen=True)
class PoolMix:
    """Rows in the pool and the share of each kind (the clean T0 rows are the rest).

    The defaults plant 30 % of the rows as problems (6 % near-duplicate instructions, 5 % each
    swapped, truncated and generic responses, 4.5 % each restated and off-topic rows) and give
    10 % to long worked answers; 60 % are clean T0 rows. At 30 % a random removal is right 30 %
    of the time, so a perfect filter scores 3.3x random's precision.
    """

    rows: int = 800
    eval_rows: int = 160
    near_duplicate: float = 0.06
    swapped: float = 0.05
    truncated: float = 0.05
    generic: float = 0.05
    restated: float = 0.045
    off_topic: float = 0.045
    long_good: float = 0.10
    seed: int = 0

    @classmethod
    def quick(cls) -> PoolMix:
        """A third of the default size: seconds to select and fine-tune on two cores."""
        return cls(rows=300, eval_rows=80)

    def counts(self) -> dict[str, int]:
        """Rows of each kind, ``clean`` last (whatever the shares leave)."""
        shares = {k: getattr(self, k) for k in (*PLANTED_KINDS, "long_good")}
        if sum(shares.values()) >= 1.0 or min(shares.values()) < 0:
            raise ValueError(f"PoolMix shares must be >= 0 and sum below 1, got {shares}")
        counts = {k: round(v * self.rows) for k, v in shares.items()}
        counts["clean"] = self.rows - sum(counts.values())
        return counts


@dataclass
class PoolFiles:
    """What :func:`build_sft_pool` wrote: the pool, the held-out eval set and the ground truth."""

    pool: Path
    eval: Path
    truth: Path
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _t0_rows(folder: Path, rows: slice) -> list[dict[str, str]]:
    """(prompt, completion, task) of ``rows`` of every T0 template, short prompts, real answers."""
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        for k, record in enumerate(list(iter_jsonl(path))[rows]):
            prompt = record["prompt"].strip()
            answer = record["completion"].replace(END_OF_TEXT, "").strip()
            if answer and len(prompt) <= MAX_PROMPT_CHARS:
                out.append({"prompt": prompt, "completion": answer, "task": path.stem,
                            "origin": f"t0/{path.stem}/{rows.start + k}"})
    return out


def _gsm8k_rows(path: Path) -> list[dict[str, str]]:
    """GSM8K problems with their worked solutions as prose (no ``<<...>>`` calculator marks)."""
    out = []
    for k, record in enumerate(iter_jsonl(path)):
        steps, _, final = record["answer"].partition("####")
        steps = re.sub(r"<<[^>]*>>", "", steps).strip()
        out.append({"prompt": record["question"].strip(),
                    "completion": f"{steps}\nThe answer is {final.strip()}.",
                    "task": "gsm8k", "origin": f"gsm8k/{path.stem}/{k}"})
    return out


def _passages(data: Path) -> list[str]:
    """Prose that is not instruction data: Sherlock Holmes, Shakespeare, WikiText-2 paragraphs."""
    sherlock = gutenberg_paragraphs(data / "lm" / "doyle_adventures.txt", min_words=50)
    shakespeare = gutenberg_paragraphs(data / "lm" / "tinyshakespeare.txt", min_words=50)
    wiki = wikitext_paragraphs(data / "lm" / "wikitext2_valid.txt", min_words=50)
    return sherlock + shakespeare + wiki


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _near_duplicate(prompt: str, rng: random.Random) -> str:
    """The instruction as a second collection would carry it: re-spaced, re-cased, re-punctuated."""
    edits = rng.sample(["case", "space", "punct", "prefix"], 2)
    text = prompt
    if "case" in edits:
        text = text[:1].swapcase() + text[1:]
    if "space" in edits:
        text = re.sub(r"\n+", " ", text).replace(" ", "  ", 1)
    if "punct" in edits:
        text = text.rstrip(".?!:") + rng.choice(["", ".", "?", ":"])
    if "prefix" in edits:
        text = rng.choice(["Please answer: ", "Instruction: ", "Task: "]) + text
    return text


def _truncate(answer: str, rng: random.Random) -> str:
    """The answer cut mid-sentence, 30-60 % of its words kept, never at a sentence's end."""
    words = answer.split()
    cut = max(3, int(len(words) * rng.uniform(0.3, 0.6)))
    while cut > 3 and words[cut - 1][-1:] in ".!?":
        cut -= 1
    return " ".join(words[:cut])


def _off_topic(passage: str) -> dict[str, str]:
    """A paragraph split into an "instruction" and a "response", as a careless scraper does."""
    sentences = _sentences(passage)
    head = max(1, len(sentences) // 3)
    return {"prompt": " ".join(sentences[:head]), "completion": " ".join(sentences[head:]) or
            passage, "task": "off_topic"}


def _plant(clean: list[dict], gsm8k: list[dict], passages: list[str], counts: dict[str, int],
           rng: random.Random) -> list[dict]:
    """Every pool row with its ground-truth ``kind`` (and ``duplicate_of`` for near copies)."""
    n_t0 = counts["clean"] + counts["swapped"] + counts["truncated"] + counts["generic"] \
        + counts["restated"]
    if n_t0 > len(clean) or counts["long_good"] > len(gsm8k):
        raise ValueError(f"the data kit has {len(clean)} T0 and {len(gsm8k)} GSM8K rows; the "
                         f"pool needs {n_t0} and {counts['long_good']}")
    t0 = rng.sample(clean, n_t0)
    rows = [dict(r, kind="long_good") for r in rng.sample(gsm8k, counts["long_good"])]
    rest = iter(t0)
    for kind in ("swapped", "truncated", "generic", "restated"):
        rows += [dict(next(rest), kind=kind) for _ in range(counts[kind])]
    rows += [dict(r, kind="clean") for r in rest]
    long_answers = [r for r in rows if len(r["completion"].split()) >= 12 and r["kind"] in
                    ("clean", "long_good")]
    # truncation needs answers long enough to cut: swap kinds with long clean/long_good rows
    for row in (r for r in rows if r["kind"] == "truncated"):
        if len(row["completion"].split()) < 12 and long_answers:
            donor = long_answers.pop(rng.randrange(len(long_answers)))
            donor["kind"], row["kind"] = "truncated", donor["kind"]
    answers = [r["completion"] for r in rows]
    tasks = [r["task"] for r in rows]
    for row in rows:
        if row["kind"] == "swapped":
            j = rng.choice([j for j in range(len(rows)) if tasks[j] != row["task"]])
            row["completion"] = answers[j]
        elif row["kind"] == "truncated":
            row["completion"] = _truncate(row["completion"], rng)
        elif row["kind"] == "generic":
            row["completion"] = rng.choice(GENERIC_ANSWERS)
        elif row["kind"] == "restated":
            row["completion"] = rng.choice(RESTATE_PREFIXES) + row["prompt"]
    rows += [dict(_off_topic(p), origin="prose", kind="off_topic")
             for p in rng.sample(passages, counts["off_topic"])]
    sources = [r for r in rows if r["kind"] in ("clean", "long_good")]
    for source in rng.sample(sources, min(counts["near_duplicate"], len(sources))):
        rows.append(dict(source, prompt=_near_duplicate(source["prompt"], rng),
                         kind="near_duplicate", duplicate_of=source["origin"]))
    rng.shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build_sft_pool(out: str | Path, data: Path, mix: PoolMix | None = None) -> PoolFiles:
    """Write ``out/pool.jsonl`` (id, prompt, completion), ``out/eval.jsonl`` (clean held-out
    pairs) and ``out/truth.json`` (the kind of every pool row; near copies name their original).
    """
    mix = mix or PoolMix()
    out = Path(out)
    rng = random.Random(mix.seed)
    counts = mix.counts()
    folder = data / "sft" / "t0_train"
    rows = _plant(_t0_rows(folder, T0_POOL_ROWS), _gsm8k_rows(data / "math" / "gsm8k_train.jsonl"),
                  _passages(data), counts, rng)
    ids = [f"row-{i:05d}" for i in range(len(rows))]
    by_origin = {r["origin"]: i for i, r in zip(ids, rows, strict=True) if r["kind"] != "near_duplicate"}
    truth = {"mix": asdict(mix), "counts": counts, "kinds": {}, "duplicate_of": {}, "origin": {}}
    for row_id, row in zip(ids, rows, strict=True):
        truth["kinds"][row_id] = row["kind"]
        truth["origin"][row_id] = row["origin"]
        if row["kind"] == "near_duplicate":
            truth["duplicate_of"][row_id] = by_origin[row["duplicate_of"]]
    pool = out / "pool.jsonl"
    _write_jsonl(pool, ({"id": i, "prompt": r["prompt"], "completion": r["completion"]}
                        for i, r in zip(ids, rows, strict=True)))
    held_t0 = _t0_rows(folder, T0_EVAL_ROWS)
    held_math = _gsm8k_rows(data / "math" / "gsm8k_test.jsonl")
    n_math = round(mix.eval_rows * counts["long_good"] / (counts["long_good"] + counts["clean"]))
    held = rng.sample(held_t0, mix.eval_rows - n_math) + rng.sample(held_math, n_math)
    evaluation = out / "eval.jsonl"
    _write_jsonl(evaluation, ({"id": f"eval-{i:05d}", "prompt": r["prompt"],
                               "completion": r["completion"], "origin": r["origin"]}
                              for i, r in enumerate(held)))
    truth_path = out / "truth.json"
    atomic_write_json(truth_path, truth)
    return PoolFiles(pool, evaluation, truth_path, counts)


def planted_removed(truth: dict[str, Any], kept_ids: set[str]) -> list[dict[str, Any]]:
    """Per kind: rows planted and rows removed, against the pool's ground truth.

    A near copy counts as caught when it or its original was removed (dedup keeps whichever it
    meets first; one of the two surviving is right), at most once per original. ``long_good``
    and ``clean`` rows removed are the selection's cost, not a catch.
    """
    kinds: dict[str, str] = truth["kinds"]
    planted: collections.Counter = collections.Counter(kinds.values())
    # an original dropped while its copy stays is the pair handled, not a good row lost
    stood_in = {original for copy, original in truth["duplicate_of"].items()
                if copy in kept_ids and original not in kept_ids}
    removed = collections.Counter(k for i, k in kinds.items()
                                  if i not in kept_ids and i not in stood_in)
    caught_pairs = sum(1 for copy, original in truth["duplicate_of"].items()
                       if copy not in kept_ids or original not in kept_ids)
    removed["near_duplicate"] = min(caught_pairs, planted["near_duplicate"])
    order: Sequence[str] = (*PLANTED_KINDS, "long_good", "clean")
    return [{"kind": k, "planted": planted[k] if k in PLANTED_KINDS else 0,
             "rows": planted[k], "removed": removed[k]} for k in order if planted[k]]
