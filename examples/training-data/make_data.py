"""Writes the small inputs of docs/training-data.md from the real-data kit (../shared/data).

corpus.jsonl: WikiText and Conan Doyle paragraphs with planted exact and near copies;
chat.jsonl: T0 reading-comprehension pairs as chat messages, two of them repeated.
Usage: ``python examples/training-data/make_data.py`` (from the repository root).
"""

import json
import os
from pathlib import Path

from datadiet.pipeline.demo.corpus import build_sample_corpus

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DATADIET_SHARED_DATA", HERE.parents[2] / "shared" / "data"))

if __name__ == "__main__":
    build_sample_corpus(HERE / "corpus.jsonl", n_base=10, shared_data=DATA)
    source = DATA / "sft" / "t0_train" / "adversarial_qa_dbert_answer_the_following_q.jsonl"
    pairs = [json.loads(line) for line in source.read_text().splitlines()[:6]]
    with open(HERE / "chat.jsonl", "w", encoding="utf-8") as out:
        for i, pair in enumerate(pairs + pairs[:2]):
            messages = [{"role": "user", "content": pair["prompt"]},
                        {"role": "assistant", "content": pair["completion"]}]
            out.write(json.dumps({"id": f"qa-{i}", "messages": messages}) + "\n")
