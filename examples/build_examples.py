"""Writes the small example files the README and docs run on (deterministic; no outside data).

The texts are generated from this file's own sentence templates, so the examples ship with the
repository and run on a machine that has nothing else: a pre-training corpus with planted exact
copies, edited near copies and junk, and a fine-tuning set with planted bad rows (GSM8K-style `question`/`answer` records: repeats,
rows copied from the eval set, non-answers), the first of them also as chat `messages`.
Run it again after changing a template: `python examples/build_examples.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

TOPICS = {
    "gardening": ["tomato seedlings", "compost heaps", "raised beds", "climbing beans",
                  "the herb border", "apple trees", "winter cabbages", "the rain barrel"],
    "astronomy": ["the ringed planet", "a faint comet", "the spiral galaxy", "the red giant",
                  "meteor showers", "the lunar terminator", "binary stars", "the zodiacal light"],
    "cooking": ["sourdough starters", "slow-cooked lentils", "a lemon tart", "roasted squash",
                "the spice drawer", "fresh pasta", "a cast iron pan", "vegetable stock"],
    "cycling": ["the mountain pass", "a gravel bike", "tubeless tyres", "the chain guard",
                "the morning commute", "a steep descent", "the bike lane", "saddle height"],
    "libraries": ["the reading room", "old atlases", "the card catalogue", "rare manuscripts",
                  "the children's corner", "interlibrary loans", "the quiet floor", "map drawers"],
}
VERBS = ["changes with", "depends on", "is shaped by", "often surprises", "rewards", "needs",
         "responds to", "improves with", "is easy to miss in", "is best judged by"]
OBJECTS = ["the weather of the season", "a patient eye", "careful notes kept over years",
           "the advice of a neighbour", "a little practice every day", "the light in the evening",
           "what the last visitor left behind", "the cost of doing it badly",
           "the tools at hand", "a quiet hour before breakfast"]
OPENERS = ["Many people find that", "It is worth noting that", "In my experience",
           "Most guides agree that", "Few beginners expect that", "Over a long summer",
           "On a good day", "Every year", "According to an old handbook",
           "As anyone who has tried it knows"]


def document(rng: random.Random) -> str:
    """Five to eight sentences on one topic, no opener, verb or object used twice."""
    topic = rng.choice(sorted(TOPICS))
    k = rng.randint(5, 8)
    parts = zip(rng.sample(OPENERS, k), rng.sample(TOPICS[topic], k), rng.sample(VERBS, k),
                rng.sample(OBJECTS, k), strict=True)
    sentences = [f"{o} {s} {v} {obj}." for o, s, v, obj in parts]
    cut = rng.randint(2, k - 2)
    return " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])


def near_copy(rng: random.Random, text: str) -> str:
    """A copy with one sentence's opener changed: what an edited repost looks like."""
    words = text.split(" ")
    words[rng.randrange(len(words))] = rng.choice(["indeed", "truly", "always"])
    return " ".join(words)


def junk(rng: random.Random) -> str:
    kinds = [lambda: "BUY NOW!!! " * rng.randint(5, 15),
             lambda: "click here",
             lambda: "\n".join(f"- item {i}" for i in range(rng.randint(8, 20))),
             lambda: "#### " + " ".join("#tag" for _ in range(30))]
    return rng.choice(kinds)()


def corpus(rng: random.Random, n_unique: int = 150) -> list[dict[str, str]]:
    texts = [document(rng) for _ in range(n_unique)]
    texts += [rng.choice(texts[:n_unique]) for _ in range(20)]            # exact copies
    texts += [near_copy(rng, rng.choice(texts[:n_unique])) for _ in range(15)]
    texts += [junk(rng) for _ in range(15)]
    rng.shuffle(texts)
    return [{"id": f"doc-{i:04d}", "text": t} for i, t in enumerate(texts)]


def arithmetic_row(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op, value = rng.choice([("plus", a + b), ("minus", a - b), ("times", a * b)])
    return {"question": f"What is {a} {op} {b}? Explain briefly.",
            "answer": f"{a} {op} {b} is {value}. We apply the {op} operation to {a} and "
                          f"{b}, which gives {value}."}


def finetuning_set(rng: random.Random) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rows = [arithmetic_row(rng) for _ in range(36)]
    evals = [arithmetic_row(rng) for _ in range(10)]
    rows += [dict(evals[i]) for i in range(3)]                              # contamination
    rows += [dict(rows[i]) for i in range(4)]                               # exact repeats
    rows += [{"question": r["question"], "answer": "I am not sure, sorry."} for r in rows[4:8]]
    rng.shuffle(rows)
    return rows, evals


POSITIVE = ["a gorgeous", "a witty", "a moving", "a warm", "a superb", "a delightful",
            "a sharp and funny", "a tender"]
NEGATIVE = ["a dull", "a tedious", "a lifeless", "a clumsy", "a forgettable", "a shallow",
            "a muddled", "an overlong"]
THINGS = ["film", "comedy", "thriller", "drama", "documentary", "story", "performance",
          "script"]
ENDINGS = ["that stays with you", "from start to finish", "with a great cast",
           "about family and loss", "set in a small town", "with too many subplots",
           "for a rainy evening", "that nobody asked for"]


def reviews(rng: random.Random, n: int) -> list[str]:
    """`LABEL TEXT` lines (1 = positive), the layout SST-2's files have."""
    lines = []
    for _ in range(n):
        label = rng.randint(0, 1)
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        lines.append(f"{label} {adjective} {rng.choice(THINGS)} {rng.choice(ENDINGS)}")
    return lines


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(2026)
    write_jsonl(HERE / "corpus.jsonl", corpus(rng))
    rows, evals = finetuning_set(rng)
    write_jsonl(HERE / "sft.jsonl", rows)
    write_jsonl(HERE / "sft_eval.jsonl", evals)
    chats = [{"id": f"chat-{i}", "messages": [{"role": "user", "content": r["question"]},
                                               {"role": "assistant", "content": r["answer"]}]}
             for i, r in enumerate(rows[:10] + rows[:2])]                 # two repeats
    write_jsonl(HERE / "chat.jsonl", chats)
    (HERE / "reviews_train.txt").write_text("\n".join(reviews(rng, 60)) + "\n")
    (HERE / "reviews_test.txt").write_text("\n".join(reviews(rng, 16)) + "\n")


if __name__ == "__main__":
    main()
