"""The tokenize-and-write script a user writes with ``datasets``: the baseline of
``benchmarks/export.py`` (code we wrote, the obvious way).

Load the curated folder with ``load_dataset``, tokenize with ``Dataset.map`` (batched, the same
tokenizer, ``num_proc`` = all cores), append end-of-text to each document, then write one flat
``uint16``/``uint32`` token file through ``np.memmap`` a shard at a time (the way nanoGPT's
``prepare.py`` scripts do) and the counts as JSON.
Usage: ``export_datasets_map.py CURATED_FOLDER TOKENIZER_FOLDER OUT_FOLDER``.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from datasets import load_dataset
from transformers import AutoTokenizer

source, tokenizer_folder, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
eos = tokenizer.eos_token_id


def tokenize(batch):
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"ids": [x + [eos] for x in ids], "len": [len(x) + 1 for x in ids]}


if __name__ == "__main__":
    dataset = load_dataset(source, split="train")
    tokenized = dataset.map(tokenize, batched=True, num_proc=os.cpu_count(),
                            remove_columns=dataset.column_names)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    total = int(np.sum(tokenized["len"], dtype=np.int64))
    out.mkdir(parents=True, exist_ok=True)
    tokens = np.memmap(out / "tokens.bin", dtype=dtype, mode="w+", shape=(total,))
    shards, at = 64, 0
    for index in range(shards):
        shard = tokenized.shard(num_shards=shards, index=index, contiguous=True).with_format("numpy")
        batch = np.concatenate(shard["ids"]) if len(shard) else np.zeros(0, dtype)
        tokens[at : at + len(batch)] = batch
        at += len(batch)
    tokens.flush()
    (out / "tokens.json").write_text(json.dumps({"dtype": np.dtype(dtype).name, "tokens": total,
                                                 "documents": len(tokenized)}))
