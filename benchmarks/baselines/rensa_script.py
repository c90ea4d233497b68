"""The dedup script a user writes with rensa: exact set, then streaming MinHash LSH.

Baseline of ``benchmarks/curate_e2e.py`` (code we wrote, the obvious way): one JSON object per
line, ``{id, text}``; exact copies by a set of text digests; near copies by word 5-gram MinHash
(128 permutations) and an LSH index at Jaccard 0.8 (16 bands of 8 rows), queried before each
insert, candidates checked against the threshold; kept lines written as they came.
Usage: ``rensa_script.py IN.jsonl OUT.jsonl``.
"""

import hashlib
import json
import re
import sys

from rensa import RMinHash, RMinHashLSH

NUM_PERM, NGRAM, THRESHOLD, BANDS = 128, 5, 0.8, 16
WORD = re.compile(r"\w+")

seen: set[bytes] = set()
lsh = RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)
kept: dict[int, RMinHash] = {}
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
            shingles = [" ".join(words[s : s + NGRAM]) for s in range(n)]
            mh = RMinHash(NUM_PERM, 42)
            mh.update(shingles)
            if any(mh.jaccard(kept[j]) >= THRESHOLD for j in lsh.query(mh)):
                continue
            lsh.insert(i, mh)
            kept[i] = mh
        out.write(line)
