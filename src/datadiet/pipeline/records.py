"""Fine-tuning records: which columns hold the instruction and the response, and how to render them.

Instruction-tuning sets come in three shapes, and every fine-tuning step (IFD, judge, DEITA...)
needs the same two things from a row: the pairs ``(prompt, response)`` to score — one per
assistant turn, so multi-turn chats are scored on every answer — and one concatenated ``text`` for
the pre-training steps (dedup, k-center, random) that work on whole documents. Doing that in one
module means every step agrees on what "the instruction" of a row is, and the reader can reject a
row that fits no shape with its file and line before any step runs.

Shapes (the canonical field names; an explicit mapping renames them to the data's columns):

* ``alpaca``: ``instruction``, optional ``input``, ``output``;
* ``chat``: ``messages``, an OpenAI-style list of ``{"role", "content"}`` (system, user, assistant,
  tool), scored on its assistant turns;
* ``prompt_completion``: ``prompt``, ``completion`` (the T0 / OpenAI fine-tuning files);
* ``text``: one ``text`` column, a pre-training corpus.

Detection never guesses between shapes: a row whose fields fit two of them (say ``text`` and
``messages``) is an error that asks for an explicit ``fields:`` mapping, because choosing one would
silently leave the other's data out of every score.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from datasets import Dataset


__all__ = [
    "FORMAT_FIELDS",
    "RecordFormat",
    "detect_format",
    "parse_fields",
    "problem_with",
    "render_text",
    "turns",
]

FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output"),
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
OPTIONAL_FIELDS = frozenset({"input"})
CHAT_ROLES = ("system", "user", "assistant", "tool")
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass(frozen=True)
class RecordFormat:
    """A record shape plus the data's column for each of its canonical fields.

    ``columns`` maps canonical names (``instruction``, ``messages``, ...) to the columns that hold
    them, so ``{"prompt": "question", "completion": "answer"}`` reads GSM8K as prompt/completion.
    """

    kind: str
    columns: tuple[tuple[str, str], ...]

    @classmethod
    def default(cls, kind: str, text_field: str = "text") -> RecordFormat:
        names = FORMAT_FIELDS[kind]
        cols = tuple((n, text_field if kind == "text" else n) for n in names)
        return cls(kind, cols)

    def column(self, name: str) -> str:
        return dict(self.columns)[name]

    @property
    def data_columns(self) -> list[str]:
        """The data's columns this format reads, in canonical order."""
        return [col for _, col in self.columns]

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    def describe(self) -> dict[str, Any]:
        """The manifest's record of how rows were read (repeatable as a spec ``fields:``)."""
        return {"format": self.kind, "fields": dict(self.columns)}


def parse_fields(value: Any, text_field: str = "text") -> RecordFormat | None:
    """Read a spec's ``fields:`` entry: ``None``/``"auto"`` (detect), a format name, or a mapping.

    A mapping's keys are canonical field names and its values the data's columns; it must name
    the required fields of exactly one format. Raises ``ValueError`` naming the bad key.
    """
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        if value not in FORMAT_FIELDS:
            raise ValueError(f"fields: unknown format {value!r}; use auto, "
                             f"{', '.join(FORMAT_FIELDS)}, or a mapping like "
                             "{prompt: question, completion: answer}")
        return RecordFormat.default(value, text_field)
    if isinstance(value, Mapping) and "format" in value and "fields" in value:  # a manifest's
        return parse_fields(dict(value["fields"]), text_field)
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"fields: expected auto, a format name or a mapping, got {value!r}")
    for key, col in value.items():
        if not isinstance(col, str) or not col:
            raise ValueError(f"fields: {key!r} must map to a column name, got {col!r}")
    known = {name: kind for kind, names in FORMAT_FIELDS.items() for name in names}
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ValueError(f"fields: unknown field {unknown[0]!r}; known fields: "
                         + "; ".join(f"{k}: {', '.join(v)}" for k, v in FORMAT_FIELDS.items()))
    kinds = sorted({known[k] for k in value})
    if len(kinds) > 1:
        raise ValueError(f"fields: {', '.join(map(repr, value))} mix the formats "
                         f"{' and '.join(kinds)}; map the fields of one format")
    kind = kinds[0]
    missing = [n for n in FORMAT_FIELDS[kind] if n not in value and n not in OPTIONAL_FIELDS]
    if missing:
        raise ValueError(f"fields: format {kind} needs {', '.join(map(repr, missing))} too")
    cols = tuple((n, str(value.get(n, n))) for n in FORMAT_FIELDS[kind])
    return RecordFormat(kind, cols)


def _required(kind: str) -> list[str]:
    return [n for n in FORMAT_FIELDS[kind] if n not in OPTIONAL_FIELDS]


def detect_format(keys: Iterable[str], text_field: str = "text",
                  kinds: Iterable[str] = tuple(FORMAT_FIELDS), noun: str = "fields") -> RecordFormat:
    """The one format (of ``kinds``) whose required fields are all among ``keys``.

    Raises ``ValueError`` when none fits (naming the fields that are there) or when several do
    (naming them, and asking for an explicit mapping).
    """
    present = set(keys)
    fits = [kind for kind in kinds
            if all((text_field if kind == "text" else n) in present for n in _required(kind))]
    if len(fits) == 1:
        return RecordFormat.default(fits[0], text_field)
    shown = ", ".join(sorted(present)[:12]) or "none"
    if not fits:
        raise ValueError(
            f"missing text field {text_field!r} ({noun}: {shown}), and no fine-tuning format "
            "fits: expected instruction/output, messages, or prompt/completion, or map the "
            "columns with `fields:` in the spec"
        )
    raise ValueError(f"the {noun} ({shown}) fit several formats ({', '.join(fits)}); say which "
                     "with `fields:` in the spec so no column is silently left out")


def messages_of(value: Any) -> Any:
    """Chat messages as a list (the reader stores nested values as JSON strings)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


#: Chat messages as TRL's ``SFTTrainer``, ``datasets`` and chat templates read them.
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def restore_messages(table: pa.Table, fmt: RecordFormat | None) -> pa.Table:
    """A chat output's messages column as a list of ``{role, content}``, as the input had it.

    Why: the reader carries nested fields as JSON text (one schema of strings for every input),
    but a fine-tuning job reads the curated folder as it is: ``SFTTrainer`` applies the chat
    template to a list of messages, not to a string. Messages with other keys than role and
    content (tool calls, names) stay JSON text rather than lose those keys.
    """
    if fmt is None or fmt.kind != "chat" or fmt.column("messages") not in table.column_names:
        return table
    name = fmt.column("messages")
    values = [None if v is None else messages_of(v) for v in table.column(name).to_pylist()]
    if any(v is not None and (not isinstance(v, list) or any(
            not isinstance(m, Mapping) or set(m) - {"role", "content"} for m in v))
           for v in values):
        return table
    index = table.column_names.index(name)
    return table.set_column(index, pa.field(name, MESSAGES_TYPE), pa.array(values, MESSAGES_TYPE))


def _chat_problem(column: str, messages: Any) -> str | None:
    if not isinstance(messages, list):
        return f"field {column!r} must be a list of messages, got {type(messages).__name__}"
    answered = False
    for i, msg in enumerate(messages):
        where = f"{column}[{i}]"
        if not isinstance(msg, Mapping):
            return f"{where} must be an object with role and content, got {type(msg).__name__}"
        role, content = msg.get("role"), msg.get("content")
        if role not in CHAT_ROLES:
            return f"{where}: role {role!r} is not one of {', '.join(CHAT_ROLES)}"
        if not isinstance(content, str):
            return f"{where}: content is {type(content).__name__}, not a string"
        answered |= role == "assistant"
    if not answered:
        return f"field {column!r} has no assistant turn to score"
    return None


def problem_with(record: Mapping[str, Any], fmt: RecordFormat) -> str | None:
    """Why ``record`` does not fit ``fmt`` (naming the field), or ``None`` if it fits."""
    for name, column in fmt.columns:
        value = record.get(column)
        if value is None:
            if name in OPTIONAL_FIELDS:
                continue
            keys = ", ".join(list(record)[:8])
            label = "text field" if fmt.is_text else f"{fmt.kind} field"
            return f"missing {label} {column!r} (fields: {keys})"
        if name == "messages":
            problem = _chat_problem(column, messages_of(value))
            if problem:
                return problem
        elif not isinstance(value, str):
            return f"field {column!r} is {type(value).__name__}, not a string"
    return None


def _render_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    return "".join(f"{ROLE_LABELS[m['role']]}: {m['content']}\n\n" for m in messages)


def turns(record: Mapping[str, Any], fmt: RecordFormat) -> list[tuple[str, str]]:
    """The ``(prompt, response)`` pairs a row is scored on: one per assistant turn.

    A chat turn's prompt is the whole conversation before it (``"User: ...\\n\\nAssistant: "``),
    so a later answer is scored in the context it was given in.
    """
    if fmt.kind == "alpaca":
        prompt = record[fmt.column("instruction")]
        extra = record.get(fmt.column("input"))
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return [(f"{prompt}\n\n", record[fmt.column("output")])]
    if fmt.kind == "prompt_completion":
        return [(record[fmt.column("prompt")], record[fmt.column("completion")])]
    if fmt.kind == "chat":
        messages = messages_of(record[fmt.column("messages")])
        return [(_render_messages(messages[:i]) + f"{ROLE_LABELS['assistant']}: ", m["content"])
                for i, m in enumerate(messages) if m["role"] == "assistant"]
    raise ValueError("a text record has no instruction and response; use a fine-tuning format")


def render_text(record: Mapping[str, Any], fmt: RecordFormat) -> str:
    """The whole row as one document, for the steps that read text (dedup, k-center, ...)."""
    if fmt.is_text:
        return record[fmt.column("text")]
    if fmt.kind == "chat":
        return _render_messages(messages_of(record[fmt.column("messages")])).rstrip("\n")
    prompt, response = turns(record, fmt)[0]
    return prompt + response


def turns_key(pairs: Sequence[tuple[str, str]]) -> bytes:
    """A content hash of what a row is scored on (the score cache's row key)."""
    blob = json.dumps(pairs, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(blob, digest_size=16).digest()


def sft_format(column_names: Sequence[str], given: RecordFormat | None,
               text_field: str = "text", step: str = "this step") -> RecordFormat:
    """The fine-tuning format of a dataset: ``given`` (from the spec or the reader) or detected.

    Detection ignores ``text_field``, which the reader fills with the rendered row.
    """
    if given is not None and not given.is_text:
        missing = [c for c in given.data_columns if c not in column_names and c != "input"]
        if missing:
            raise ValueError(f"{step}: the dataset has no column {missing[0]!r} "
                             f"(columns: {', '.join(column_names)})")
        return given
    try:
        return detect_format([c for c in column_names if c != text_field],
                             kinds=[k for k in FORMAT_FIELDS if k != "text"])
    except ValueError as exc:
        raise ValueError(f"{step} needs instruction data (instruction/output, messages, or "
                         f"prompt/completion columns): {exc}") from exc


def iter_records(ds: Dataset, fmt: RecordFormat, batch_size: int = 1000
                 ) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``ds`` as dicts of the format's columns, in batches (no other column read)."""
    cols = [c for c in fmt.data_columns if c in ds.column_names]
    view = ds.select_columns(cols)
    for start in range(0, len(ds), batch_size):
        batch = view[start : start + batch_size]
        n = len(batch[cols[0]])
        yield [{c: batch[c][i] for c in cols} for i in range(n)]


def with_text(ds: Dataset, fmt: RecordFormat, text_field: str = "text") -> Dataset:
    """Add the rendered ``text_field`` column to an instruction dataset (the Python API path).

    Raises ``ValueError`` naming the first row that does not fit ``fmt``.
    """
    texts: list[str] = []
    for batch in iter_records(ds, fmt):
        for record in batch:
            problem = problem_with(record, fmt)
            if problem:
                raise ValueError(f"row {len(texts)}: {problem}")
            texts.append(render_text(record, fmt))
    return ds.add_column(text_field, texts)


def ensure_text(ds: Dataset, given: RecordFormat | None, text_field: str = "text",
                step: str = "this step") -> Dataset:
    """``ds`` with its text column, rendered from the instruction columns when it has none.

    The runner renders it once for a whole run; this is for a step called on its own.
    """
    if text_field in ds.column_names:
        return ds
    return with_text(ds, sft_format(ds.column_names, given, text_field, step), text_field)
