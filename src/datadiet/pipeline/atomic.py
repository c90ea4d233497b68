"""THE atomic writer: every file or folder datadiet writes goes through :func:`atomic_path`.

Why a module of its own (re-exported by :mod:`datadiet.pipeline.io`): it needs only the
standard library, so the model stages (tokenizer and model folders, checkpoints) use the same
writer on a machine without the data stack (a GPU box with only torch), and a crash or a signal
never leaves a half-written output anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "follow_umask"]


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path, is_dir: bool) -> None:
    """Give a temp file or folder the mode a plain ``open``/``mkdir`` would have given it.

    ``mkstemp``/``mkdtemp`` create 0600/0700 on purpose; an output that a training job under
    another user must read has to follow the umask like any other file writer.
    """
    base = 0o777 if is_dir else 0o666
    os.chmod(path, base & ~_umask())


@contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """THE atomic writer: yield a hidden temp path beside ``target``; rename onto it on success.

    Every file or folder datadiet writes goes through here (text, JSON, Parquet shards,
    checkpoints, converted models), so a crash or a signal never leaves a half-written output:
    the temp path is removed on any exception (``KeyboardInterrupt`` and the ``SystemExit``
    that :func:`install_signal_cleanup` raises for SIGTERM included). An existing folder target
    is swapped out by rename and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        follow_umask(tmp, is_dir)
        if is_dir:  # some writers (safetensors) create 0600 files whatever the umask
            for inner in tmp.rglob("*"):
                if not inner.is_symlink():
                    follow_umask(inner, inner.is_dir())
        if is_dir and target.exists():
            backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, ensure_ascii=False))
