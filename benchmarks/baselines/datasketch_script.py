"""The dedup script a user writes with datasketch: exact set, then streaming MinHash LSH.

Baseline of ``benchmarks/curate_e2e.py`` (code we wrote, the obvious way): one JSON object per
line, ``{id, text}``; exact copies by a set of text digests; near copies by word 5-gram MinHash
(128 permutations, ``update_batch``) and a ``MinHashLSH`` at Jaccard 0.8 (datasketch picks the
banding), queried before each insert, candidates checked against the threshold; kept lines
written as they came.
Usage: ``datasketch_script.py IN.jsonl OUT.jsonl``.
"""

import hashlib
import json
import re
import sys

from datasketch import MinHash, MinHashLSH

NUM_PERM, NGRAM, THRESHOLD = 128, 5, 0.8
WORD = re.compile(r"\w+")

seen: set[bytes] = set()
lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
kept: dict[str, MinHash] = {}
with open(sys.argv[1], encoding="utf-8") as src, open(sys.argv[2], "w", encoding="utf-8") as out:
    for i, line in enumerate(src):
        text = json.loads(line)["text"]
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        words = WORD.findall(text.lower())
        if words:
            n = max(len(words) - NGRAM + 1, 1)
            mh = MinHash(num_perm=NUM_PERM, seed=42)
            mh.update_batch([" ".join(words[s : s + NGRAM]).encode() for s in range(n)])
            if any(mh.jaccard(kept[j]) >= THRESHOLD for j in lsh.query(mh)):
                continue
            lsh.insert(str(i), mh)
            kept[str(i)] = mh
        out.write(line)
