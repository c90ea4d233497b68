"""A sample corpus with planted problems, so a demo can show what curation catches.

Base documents are real paragraphs from the shared data kit when it is present (WikiText-2,
Sherlock Holmes), else prose generated from a small built-in grammar. Then copies are planted
with known ground truth: exact duplicates (with case/whitespace changes), near duplicates (word
edits, an inserted sentence, truncation) and junk (symbol spam, repeated lines, bullet lists,
stubs). Every record carries ``planted`` (``original``, ``exact``, ``near``, ``junk:<kind>``) and
``source_id`` so the demo can score what each step caught.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from datadiet.pipeline.io import UserError, atomic_write_text


def find_shared_data() -> Path | None:
    """The shared real-data kit: ``$DATADIET_SHARED_DATA``, else ``../shared/data`` upwards."""
    env = os.environ.get("DATADIET_SHARED_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    here = Path.cwd().resolve()
    for parent in [here, *here.parents][:4]:
        candidate = parent.parent / "shared" / "data"
        if (candidate / "lm").is_dir():
            return candidate
    return None


class DataKitMissing(UserError):
    """The demo measures on real data only; where the kit is not found it stops (exit 2)."""


#: What the demo reads from the kit (each stage's inputs).
DEMO_KIT_FILES = ("lm/wikitext2_valid.txt", "sft/t0_train", "math/gsm8k_train.jsonl",
                  "icl/sst2/train.txt")


def data_kit(data: str | os.PathLike | None = None) -> Path:
    """The real-data kit: ``data``, or the usual places (:func:`find_shared_data`); else stop."""
    found = Path(data) if data else find_shared_data()
    if found is None or not all((found / w).exists() for w in DEMO_KIT_FILES):
        where = f"{found}" if found else (f"$DATADIET_SHARED_DATA or ../shared/data above "
                                          f"{Path.cwd()}")
        raise DataKitMissing(
            f"the real-data kit was not found at {where} (it needs "
            f"{', '.join(DEMO_KIT_FILES)}). Run the demo from the repository beside "
            "shared/data, or pass --data DIR or set DATADIET_SHARED_DATA; the demo does not "
            "measure savings on made-up text.")
    return found


def wikitext_paragraphs(path: Path, min_words: int = 60) -> list[str]:
    """Article paragraphs of a WikiText file (headings dropped, tokenisation artefacts undone)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
        line = re.sub(r" ([.,;:!?)'])", r"\1", line).replace("( ", "(")
        if len(line.split()) >= min_words:
            out.append(line)
    return out


def gutenberg_paragraphs(path: Path, min_words: int = 60) -> list[str]:
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    paragraphs = [" ".join(b.split()) for b in blocks]
    return [p for p in paragraphs if len(p.split()) >= min_words]


_SUBJECTS = ["The river", "A small town", "The old library", "Our committee", "The engineer",
             "The harvest", "A quiet museum", "The northern railway", "The orchestra", "The ferry"]
_VERBS = ["opened", "described", "carried", "measured", "restored", "welcomed", "recorded",
          "crossed", "planned", "finished"]
_OBJECTS = ["a new bridge over the valley", "the records of the winter storms",
            "several hundred visitors from the coast", "the long history of the region",
            "a careful study of the soil", "the first concert of the season",
            "the plans for a larger station", "the costs of the repairs",
            "letters written by the founders", "a map of the older roads"]
_TAILS = ["before the end of the year.", "with the help of local families.",
          "after a long debate in the council.", "and the results surprised many of them.",
          "while the weather was still mild.", "so that the work could continue in spring."]


def generated_paragraphs(n: int, seed: int = 0) -> list[str]:
    """Plain English prose from a tiny grammar: the fallback when no real data is around."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentences = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
            for _ in range(rng.randint(5, 9))
        ]
        out.append(" ".join(sentences))
    return out


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split()
    edit = rng.choice(["edit", "insert", "truncate"])
    if edit == "edit":
        for i in rng.sample(range(len(words)), max(1, len(words) // 60)):
            words[i] = rng.choice(["also", "then", "very", "that", "many", "some"])
    elif edit == "insert":
        pos = rng.randrange(len(words))
        words[pos:pos] = "as noted later".split()
    else:
        words = words[: max(10, int(len(words) * 0.92))]
    return " ".join(words)


def junk_text(kind: str, rng: random.Random, base: str) -> str:
    if kind == "symbols":
        return " ".join(rng.choice(["#", "###", "...", "#tag", "…", "##"]) for _ in range(80)) + " " + base[:80]
    if kind == "repeated_lines":
        return "\n".join(["Click here to subscribe to our newsletter!"] * 12 + [base[:100]])
    if kind == "bullets":
        return "\n".join(f"• item {i}: {w}" for i, w in enumerate(base.split()[:40]))
    if kind == "stub":
        return " ".join(base.split()[:8])
    return "".join(rng.choice("qwxzjkv0123456789") for _ in range(400))  # gibberish


def build_sample_corpus(out: str | os.PathLike, n_base: int = 240, seed: int = 0,
                        shared_data: Path | None = None) -> dict[str, int]:
    """Write the sample JSONL corpus to ``out``; return how many of each planted kind."""
    rng = random.Random(seed)
    data = shared_data if shared_data is not None else find_shared_data()
    base: list[str] = []
    if data is not None:
        base += wikitext_paragraphs(data / "lm" / "wikitext2_valid.txt")[: n_base * 2 // 3]
        base += gutenberg_paragraphs(data / "lm" / "doyle_adventures.txt")[: n_base // 3]
    if len(base) < n_base:
        base += generated_paragraphs(n_base - len(base), seed)
    base = base[:n_base]
    records = [{"id": f"doc-{i:05d}", "text": t, "planted": "original", "source_id": f"doc-{i:05d}"}
               for i, t in enumerate(base)]
    counts = plant_problems(records, rng)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return counts


JUNK_KINDS = ("symbols", "repeated_lines", "bullets", "stub", "gibberish")


def plant_problems(records: list[dict], rng: random.Random, exact_fraction: float = 0.1,
                   near_fraction: float = 0.125, junk_fraction: float = 0.125) -> dict[str, int]:
    """Append planted copies and junk to ``records`` (originals with ``id``), then shuffle them.

    Exact copies vary case and whitespace (what normalisation must see through); near copies
    edit words, insert a phrase or truncate; junk comes in :data:`JUNK_KINDS`, built around an
    original's words. Each planted record names its original in ``source_id`` (junk: ``""``), so
    what a step caught can be scored against ground truth. Planted records get ids
    ``planted-NNNNN`` after the shuffle.
    """
    n = len(records)
    texts = [r["text"] for r in records]
    counts = {"original": n, "exact": 0, "near": 0, "junk": 0}
    for i in rng.sample(range(n), int(n * exact_fraction)):
        text = texts[i]
        variant = rng.choice([text, text.upper(), "  " + text.replace(" ", "  ") + "\n"])
        records.append({"text": variant, "planted": "exact", "source_id": records[i]["id"]})
        counts["exact"] += 1
    for i in rng.sample(range(n), int(n * near_fraction)):
        records.append({"text": near_copy(texts[i], rng), "planted": "near",
                        "source_id": records[i]["id"]})
        counts["near"] += 1
    n_junk = max(len(JUNK_KINDS), int(n * junk_fraction) // len(JUNK_KINDS) * len(JUNK_KINDS))
    for j in range(n_junk):
        kind = JUNK_KINDS[j % len(JUNK_KINDS)]
        records.append({"text": junk_text(kind, rng, texts[j % n]), "planted": f"junk:{kind}",
                        "source_id": ""})
        counts["junk"] += 1
    rng.shuffle(records)
    for k, rec in enumerate(records):
        rec.setdefault("id", f"planted-{k:05d}")
    return counts


DEMO_SPEC = """\
# The demo's curation spec: cheap, exact steps first, model-based steps on what is left.
- exact_dedup: {}
- minhash_dedup: {threshold: 0.7, num_perm: 128, ngram: 5}
- quality: {}
- perplexity: {keep: 0.9, max_tokens: 96}
"""
