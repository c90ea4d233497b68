"""Text units: the scoring tokenizer's tokens, merged so that none splits a character.

Why units: byte-level BPE (GPT-2, Llama-3, SmolLM2) and byte-fallback SentencePiece cut a Chinese
character or an emoji into several tokens. Dropping one of them leaves invalid UTF-8, which a
decoder shows as U+FFFD. Every method here therefore decides per *unit* -- a run of tokens whose
character offsets overlap -- and builds its output from slices of the original string, so the
result is always real text, whatever tokens were dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Units:
    """A partition of ``text`` into units aligned with the scoring tokenizer.

    ``starts[k]:ends[k]`` is unit k's slice of ``text``; the slices are contiguous and cover the
    whole text (characters a tokenizer skipped, such as trimmed spaces, join the unit before
    them). ``token_unit[i]`` is the unit of token i and ``n_tokens[k]`` how many tokens unit k
    has. ``mandatory`` marks units that no method may drop.
    """

    text: str
    token_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    token_unit: np.ndarray
    n_tokens: np.ndarray
    mandatory: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def bridged(self, keep: np.ndarray) -> np.ndarray:
        """``keep`` plus the whitespace-only units that keep two kept words apart.

        Where every unit between two kept ones was dropped and neither side of the join is
        whitespace, the first whitespace-only unit of that gap is kept too: a protected number
        often starts after a space token of its own, and without it "The treaty of 1648"
        would read "The treaty1648". The output stays made of slices of the original text,
        and budgets count the rendered text, so the space is paid for.
        """
        keep = np.asarray(keep, dtype=bool)
        kept = np.flatnonzero(keep)
        if len(kept) < 2:
            return keep
        text, starts, ends = self.text, self.starts, self.ends
        out = keep.copy()
        for previous, k in zip(kept[:-1], kept[1:], strict=True):
            if k == previous + 1 or starts[k] >= len(text) or ends[previous] <= 0:
                continue
            if text[starts[k]].isspace() or text[ends[previous] - 1].isspace():
                continue
            for gap in range(previous + 1, k):
                piece = text[starts[gap] : ends[gap]]
                if piece and piece.isspace():
                    out[gap] = True
                    break
        return out

    def render(self, keep: np.ndarray) -> str:
        """The text made of the kept units, in order (always valid Unicode); see :meth:`bridged`."""
        text, starts, ends = self.text, self.starts, self.ends
        return "".join(text[starts[k] : ends[k]] for k in np.flatnonzero(self.bridged(keep)))

    def kept_spans(self, keep: np.ndarray) -> list[tuple[int, int]]:
        """Character ranges of ``text`` that survive, adjacent kept units merged."""
        spans: list[tuple[int, int]] = []
        for k in np.flatnonzero(self.bridged(keep)):
            s, e = int(self.starts[k]), int(self.ends[k])
            if spans and spans[-1][1] == s:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
        return spans

    def word_ids(self) -> np.ndarray:
        """Per unit, the index of the word it belongs to.

        A unit starts a new word unless it continues letters or digits: its first character and
        the previous unit's last character are both alphanumeric (" harps" + "ich" + "ord" is
        one word; " 3" + "." + "5" is three). Methods that keep or drop whole words use this, so
        a kept word is never a fragment.
        """
        n = len(self)
        if not n:
            return np.zeros(0, dtype=np.int64)
        text = self.text
        new = np.ones(n, dtype=bool)
        for k in range(1, n):
            s, prev_end = int(self.starts[k]), int(self.ends[k - 1])
            if s < len(text) and prev_end > 0 and text[s].isalnum() and text[prev_end - 1].isalnum():
                new[k] = False
        return np.cumsum(new) - 1

    def unit_scores(self, token_scores: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Mean of per-token scores within each unit (NaN-aware; ``fill`` where none)."""
        n = len(self)
        total = np.zeros(n, dtype=np.float64)
        count = np.zeros(n, dtype=np.float64)
        ok = np.isfinite(token_scores)
        np.add.at(total, self.token_unit[ok], token_scores[ok])
        np.add.at(count, self.token_unit[ok], 1.0)
        out = np.full(n, fill, dtype=np.float64)
        np.divide(total, count, out=out, where=count > 0)
        return out


def build_units(
    text: str,
    token_ids: Sequence[int],
    offsets: np.ndarray | Sequence[Sequence[int]],
    mandatory_spans: Sequence[tuple[int, int]] = (),
) -> Units:
    """Group tokens into character-aligned units and mark those touching a mandatory span.

    A token starts a new unit only if it begins at or after the end of everything before it;
    otherwise (it shares a character with the previous token, as the pieces of a multi-byte
    character do) it joins the current unit.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n_tok = len(token_ids)
    token_unit = np.zeros(n_tok, dtype=np.int64)
    starts: list[int] = []
    reach = 0
    for i in range(n_tok):
        s, e = int(offsets[i, 0]), int(offsets[i, 1])
        if starts and (s < reach or e <= s):
            reach = max(reach, e)
        else:
            starts.append(s)
            reach = max(reach, e)
        token_unit[i] = len(starts) - 1
    if not starts and text:
        # A tokenizer that produced nothing for non-empty text: one unit, no tokens.
        starts = [0]
    starts_arr = np.asarray(starts, dtype=np.int64)
    if len(starts_arr):
        starts_arr[0] = 0
        starts_arr = np.maximum.accumulate(starts_arr)
    ends_arr = np.append(starts_arr[1:], len(text)).astype(np.int64)
    n_units = len(starts_arr)
    n_tokens = np.bincount(token_unit, minlength=n_units).astype(np.int64)[:n_units]
    mandatory = np.zeros(n_units, dtype=bool)
    for s, e in mandatory_spans:
        if e <= s or not n_units:
            continue
        # units overlapping [s, e): first unit whose end > s, up to the last whose start < e
        lo = int(np.searchsorted(ends_arr, s, side="right"))
        hi = int(np.searchsorted(starts_arr, e, side="left"))
        mandatory[lo:hi] = True
    return Units(
        text=text,
        token_ids=np.asarray(token_ids, dtype=np.int64),
        starts=starts_arr,
        ends=ends_arr,
        token_unit=token_unit,
        n_tokens=n_tokens,
        mandatory=mandatory,
    )


def tokenize_units(
    tokenizer: object, text: str, mandatory_spans: Sequence[tuple[int, int]] = ()
) -> Units:
    """Tokenise ``text`` with a Hugging Face fast tokenizer (offsets needed) and build units."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # type: ignore[operator]
    return build_units(text, enc["input_ids"], enc["offset_mapping"], mandatory_spans)
