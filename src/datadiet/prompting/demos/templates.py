"""Prompt templates for in-context learning, and the one way a few-shot prompt is assembled.

A template is the instruction, how one demonstration looks (``demo_format`` with ``{text}`` and a
final ``{label}``), the separator between demonstrations, and the label verbalizers (label value
-> the word the model should say). The query is the demonstration format cut just before the
label, so the model sees the query exactly as it saw each demonstration, up to the answer.

Why prompts are split into a *prefix* (instruction + demonstrations) and a *suffix* (separator +
query): the scorer can then run the prefix once and reuse its KV cache for many suffixes (the
content-free inputs of calibration, the probe queries of GlobalE). The split is placed *before*
the separator so that tokenising prefix and suffix apart gives the same tokens as tokenising the
whole prompt (BPE pre-tokenisers split at a word/newline boundary, never inside "\\n\\nReview").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datadiet.pipeline.config_files import read_config_file
from datadiet.pipeline.io import DataError, SpecError
from datadiet.prompting.compression import compress_batch

LABEL_SLOT = "{label}"


@dataclass(frozen=True)
class PromptTemplate:
    """Instruction, demonstration format, separator, query format and label verbalizers.

    Args:
        instruction: put first (may be empty).
        demo_format: one demonstration; must contain ``{text}`` and end with ``{label}``.
        verbalizers: label value -> word scored after the query (``{"0": "negative"}``).
        separator: between the instruction and each demonstration and the query.
        query_format: the query; default ``demo_format`` cut before ``{label}`` (trailing spaces
            go to the label word, so "Sentiment: positive" scores " positive" after "Sentiment:").
    """

    instruction: str = ""
    demo_format: str = "Input: {text}\nLabel: {label}"
    verbalizers: Mapping[str, str] = field(default_factory=dict)
    separator: str = "\n\n"
    query_format: str | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if "{text}" not in self.demo_format or not self.demo_format.endswith(LABEL_SLOT):
            raise SpecError(f"template {self.name!r}: demo_format must contain {{text}} and end "
                             f"with {{label}} (got {self.demo_format!r})")
        words = list(self.verbalizers.values())
        if len(set(words)) != len(words):
            raise SpecError(f"template {self.name!r}: two labels share a verbalizer ({words})")
        if self.query_format is not None and "{text}" not in self.query_format:
            raise SpecError(f"template {self.name!r}: query_format must contain {{text}}")

    @property
    def labels(self) -> list[str]:
        return list(self.verbalizers)

    @property
    def query_part(self) -> str:
        """The query format (the demonstration up to the answer)."""
        if self.query_format is not None:
            return self.query_format
        return self.demo_format[: -len(LABEL_SLOT)].rstrip(" ")

    @property
    def answer_gap(self) -> str:
        """What stands between the query and the label word in a demonstration (usually " ")."""
        head = self.demo_format[: -len(LABEL_SLOT)]
        return head[len(head.rstrip(" ")):] if self.query_format is None else " "

    def verbalize(self, label: str) -> str:
        """The word for ``label`` (a template without verbalizers says the label itself)."""
        if not self.verbalizers:
            return str(label)
        try:
            return self.verbalizers[str(label)]
        except KeyError:
            raise SpecError(f"label {label!r} has no verbalizer (labels: "
                             f"{', '.join(self.verbalizers)})") from None

    def label_continuation(self, label: str) -> str:
        """The text scored after the query for ``label`` (" positive")."""
        return self.answer_gap + self.verbalize(label)

    def format_demo(self, text: str, label: str) -> str:
        return self.query_part.replace("{text}", _clean(text)) + self.label_continuation(label)

    def format_query(self, text: str) -> str:
        return self.query_part.replace("{text}", _clean(text))

    def with_labels(self, labels: Sequence[str] | Mapping[str, str]) -> PromptTemplate:
        """This template for the user's label values (see :func:`verbalizers_for`)."""
        return replace(self, verbalizers=verbalizers_for(labels, self))


def _clean(text: str) -> str:
    """Demonstration text on one paragraph: a blank line inside it would read as a separator."""
    return re.sub(r"\n\s*\n", "\n", text.strip())


# Preset verbalizers: words the model knows, each a single SmolLM2 token with its leading space.
# ``aliases`` map the label values data sets actually use onto those words.
@dataclass(frozen=True)
class _Preset:
    instruction: str
    demo_format: str
    words: tuple[str, ...]
    aliases: Mapping[str, str]


_PRESETS: dict[str, _Preset] = {
    "sentiment": _Preset(
        "Classify the sentiment of each review as positive or negative.",
        "Review: {text}\nSentiment: {label}",
        ("negative", "positive"),
        {"0": "negative", "1": "positive", "neg": "negative", "pos": "positive",
         "negative": "negative", "positive": "positive"},
    ),
    "topic": _Preset(
        "Classify the topic of each article as world, sports, business or technology.",
        "Article: {text}\nTopic: {label}",
        ("world", "sports", "business", "technology"),
        {"world": "world", "sports": "sports", "business": "business", "sci/tech": "technology",
         "technology": "technology", "science": "technology"},
    ),
    "question": _Preset(
        "Classify each question by the type of its answer: abbreviation, description, entity, "
        "person, location or number.",
        "Question: {text}\nAnswer type: {label}",
        ("abbreviation", "description", "entity", "person", "location", "number"),
        {"abbr": "abbreviation", "desc": "description", "enty": "entity", "hum": "person",
         "loc": "location", "num": "number"},
    ),
    "nli": _Preset(
        "Does the premise entail the hypothesis? Answer yes, maybe or no.",
        "{text}\nAnswer: {label}",
        ("yes", "maybe", "no"),
        {"entailment": "yes", "neutral": "maybe", "contradiction": "no",
         "0": "yes", "1": "maybe", "2": "no"},
    ),
}
PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, labels: Sequence[str] | Mapping[str, str] | None = None) -> PromptTemplate:
    """A named template (``sentiment``, ``topic``, ``question``, ``nli``) for ``labels``.

    For NLI, put premise and hypothesis into one text, e.g. ``"Premise: ...\\nHypothesis: ..."``.
    """
    key = {"question_type": "question", "question-type": "question", "trec": "question",
           "sst2": "sentiment"}.get(name, name)
    if key not in _PRESETS:
        raise SpecError(f"unknown template {name!r}; presets: {', '.join(PRESET_NAMES)} "
                         "(or a JSON file with instruction, demo_format, verbalizers)")
    p = _PRESETS[key]
    base = PromptTemplate(p.instruction, p.demo_format, dict(zip(p.words, p.words, strict=True)),
                          name=key)
    return base if labels is None else base.with_labels(labels)


def verbalizers_for(labels: Sequence[str] | Mapping[str, str],
                    template: PromptTemplate | None = None) -> dict[str, str]:
    """Label value -> verbalizer word, for the user's labels.

    In order of precedence: an explicit mapping (``{"0": "bad"}`` or ``"0=bad"`` items); the
    preset's aliases (``HUM`` -> ``person``); labels numbered ``0..n-1`` or ``1..n`` matched in
    order to the preset's words when there are as many; otherwise the label value itself.
    """
    if isinstance(labels, Mapping):
        return {str(k): str(v) for k, v in labels.items()}
    items = [str(x).strip() for x in labels]
    if not items or any(not x for x in items):
        raise SpecError("labels: give at least one non-empty label value")
    if len(set(items)) != len(items):
        raise SpecError(f"labels: repeated label value in {items}")
    if any("=" in x for x in items):
        pairs = [x.split("=", 1) for x in items]
        if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
            raise SpecError(f"labels: write every item as VALUE=WORD once one does ({items})")
        return {k.strip(): v.strip() for k, v in pairs}
    spec = _PRESETS.get(template.name) if template is not None else None
    if spec is None:
        if template is not None and template.verbalizers:
            known = dict(template.verbalizers)
            return {x: known.get(x, x) for x in items}
        return {x: x for x in items}
    lowered = {k.lower(): v for k, v in spec.aliases.items()}
    if all(x.lower() in lowered for x in items):
        return {x: lowered[x.lower()] for x in items}
    if len(items) == len(spec.words) and all(x.isdigit() for x in items):
        numbers = sorted(int(x) for x in items)
        if numbers in (list(range(len(items))), list(range(1, len(items) + 1))):
            return {x: spec.words[int(x) - numbers[0]] for x in items}
    return {x: x for x in items}


def load_template(spec: str | PromptTemplate, labels: Sequence[str] | Mapping[str, str]) -> PromptTemplate:
    """A preset name, a JSON file with the template's fields, or a template, for ``labels``."""
    if isinstance(spec, PromptTemplate):
        return spec.with_labels(labels)
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml") or path.exists():
        fields: dict[str, Any] = read_config_file(path, "template file", expect=dict)
        allowed = {"instruction", "demo_format", "verbalizers", "separator", "query_format", "name"}
        unknown = set(fields) - allowed
        if unknown:
            raise DataError(f"{path}: unknown template field(s) {sorted(unknown)}; "
                            f"allowed: {sorted(allowed)}")
        try:
            template = PromptTemplate(**{"name": path.stem, **fields})
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: {exc}") from exc
        return template.with_labels(labels)
    return preset(spec, labels)


@dataclass(frozen=True)
class Prompt:
    """A few-shot prompt: ``prefix`` (instruction + demonstrations) then ``suffix`` (the query).

    ``text`` is what a model reads; the label word comes right after it.
    """

    prefix: str
    suffix: str
    n_demos: int
    compressed: bool = False

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def demo_block(template: PromptTemplate, demos: Sequence[Any]) -> str:
    """Instruction and demonstrations joined by the separator (no trailing separator)."""
    parts = [template.instruction] if template.instruction else []
    parts += [template.format_demo(d.text, d.label) for d in demos]
    return template.separator.join(parts)


def _suffix(template: PromptTemplate, prefix: str, query: str) -> str:
    return (template.separator if prefix else "") + template.format_query(query)


def build_prompt(
    template: PromptTemplate,
    demos: Sequence[Any],
    query: str,
    *,
    compress_rate: float | None = None,
    model: Any = None,
) -> Prompt:
    """The prompt for ``query`` with ``demos`` (objects with ``text`` and ``label``) in order.

    ``compress_rate`` (0-1] compresses the demonstrations only -- the instruction and the query
    stay verbatim, a demonstration is dropped whole or keeps its label -- with datadiet's
    compressor (``model``: its scoring model,
    an ``LMScorer`` to reuse a loaded one).
    """
    return build_prompts(template, [demos], [query], compress_rate=compress_rate, model=model)[0]


def build_prompts(
    template: PromptTemplate,
    demos: Sequence[Sequence[Any]],
    queries: Sequence[str],
    *,
    compress_rate: float | None = None,
    model: Any = None,
) -> list[Prompt]:
    """:func:`build_prompt` for many queries; compression calls are batched."""
    if len(demos) != len(queries):
        raise SpecError("build_prompts: one demonstration list per query")
    prefixes = [demo_block(template, d) for d in demos]
    compressed = [False] * len(queries)
    if compress_rate is not None:
        if not 0.0 < compress_rate <= 1.0:
            raise SpecError(f"compress_rate must be in (0, 1], got {compress_rate}")
        todo = [i for i, d in enumerate(demos) if d and compress_rate < 1.0]
        if todo:
            # A demonstration is dropped whole or keeps its answer ("\nSentiment: positive")
            # verbatim (protect_scope="kept_passages": a demo without its label teaches the
            # wrong thing); the instruction is passed as such and kept verbatim. The query is
            # not passed as the question: the compressor would lay it into its output, and kNN
            # demonstrations are already chosen by their similarity to it.
            cue = template.query_part.split("{text}")[-1] + template.answer_gap
            protect = [re.escape(cue + w) for w in template.verbalizers.values()]
            results = compress_batch(
                [[template.format_demo(x.text, x.label) for x in demos[i]] for i in todo],
                rate=compress_rate, instruction=template.instruction or None,
                separator=template.separator,
                protect=protect, protect_scope="kept_passages", model=model,
            )
            for i, result in zip(todo, results, strict=True):
                prefixes[i] = result.text.rstrip()
                compressed[i] = True
    return [
        Prompt(prefix, _suffix(template, prefix, q), len(d), c)
        for prefix, q, d, c in zip(prefixes, queries, demos, compressed, strict=True)
    ]
