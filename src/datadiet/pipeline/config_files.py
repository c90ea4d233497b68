"""THE reader of the files a user writes by hand: specs, training configs, prompt templates.

Why one reader: each kind used to parse its own way, so a folder given as a template, a
``null`` file, or a YAML tag (``!!python/object``) came out as a traceback in one command and a
clear line in another. Here every way such a file can be wrong is a :class:`SpecError` that
names the file (and the line, where there is one), and a file must hold the shape asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datadiet.pipeline.errors import SpecError

__all__ = ["read_config_file"]


def _read_text(path: Path, what: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a {what}") from None
    except PermissionError:
        raise SpecError(f"{path}: cannot read the {what} (permission denied)") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        noun = what.removesuffix(" file")
        raise SpecError(f"{path}:{line}: the {noun} is not UTF-8 text (byte {exc.start})") from None


def read_config_file(path: str | os.PathLike, what: str = "spec file",
                     expect: type | tuple[type, ...] | None = None) -> Any:
    """The parsed YAML (JSON is YAML) of a hand-written file; ``expect`` is the shape its top
    level must have (``dict`` for a config). YAML tags are refused: the safe loader builds
    plain data only, so a tag is an error naming its line, never code that runs."""
    import yaml

    path = Path(path).expanduser()
    text = _read_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or exc
        if "constructor" in str(problem):
            problem = f"{problem} (YAML tags are not allowed; write plain values)"
        raise SpecError(f"{where}: not valid YAML: {problem}") from None
    if expect is not None and not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        shown = "empty (or null)" if data is None else f"a {type(data).__name__}"
        kind = {"dict": "a mapping of field: value", "list": "a list"}.get(names, names)
        raise SpecError(f"{path}: the {what} must be {kind}; this one is {shown}")
    return data
