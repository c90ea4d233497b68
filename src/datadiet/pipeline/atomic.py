"""THE atomic writer: every file or folder datadiet writes goes through :func:`atomic_path`.

Why a module of its own (re-exported by :mod:`datadiet.pipeline.io`): it needs only the
standard library, so the model stages (tokenizer and model folders, checkpoints) use the same
writer on a machine without the data stack (a GPU box with only torch), and a crash or a signal
never leaves a half-written output anywhere.

Every temp name datadiet makes (the hidden ``.OUT.tmp-*`` beside an output, the ``.OUT.old-*``
of a swap, the ``datadiet-*`` scratch folders in ``$TMPDIR``) carries its owner: a hash of the
host name and the process id. A ``finally`` cannot run under SIGKILL or a power cut, so the
next writer of the same kind sweeps the leftovers whose owner is gone (same host, no such
process) — never one of a live run, nor one of another machine sharing the folder.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from datadiet.pipeline.errors import NoSpaceError, OutputError, is_no_space

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "follow_umask",
           "owned_temp_dir", "sweep_dead", "sweep_leftovers"]

#: Who owns a temp name: this host (a short hash of its name) and this process.
HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"

#: A check run on what is at the target just before it is replaced: raises to refuse.
ReplaceGuard = Callable[[Path], None]


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


# -- owned temp names and the sweep of dead owners' leftovers --------------------------------


def _owned(prefix: str) -> str:
    return f"{prefix}{HOST}-{os.getpid()}-"


def _owner_gone(name: str, prefix: str) -> bool:
    """Whether ``name`` (``prefix`` + host + pid + random) belongs to a process of this host
    that no longer runs. Names of other hosts, or without an owner, are never judged gone."""
    host, _, rest = name[len(prefix):].partition("-")
    pid_text, _, _ = rest.partition("-")
    if host != HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive under another user (EPERM)
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def sweep_dead(parent: str | os.PathLike, prefix: str,
               restore_to: Path | None = None) -> list[Path]:
    """Remove the entries of ``parent`` named ``prefix``+owner whose owner process is gone.

    ``restore_to``: for a swap's ``.old-*`` backup, a target that is missing means the run
    died between moving the old output aside and moving the new one in: the backup is put
    back instead of removed. Returns what was swept.
    """
    swept = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return swept
    for entry in entries:
        if not entry.name.startswith(prefix) or not _owner_gone(entry.name, prefix):
            continue
        if restore_to is not None and not os.path.lexists(restore_to):
            with suppress(OSError):  # failing that, it stays: never delete an only copy
                _rename_noreplace(entry, restore_to)
            continue
        _remove(entry)
        swept.append(entry)
    return swept


def sweep_leftovers(target: str | os.PathLike) -> None:
    """The temp and backup names of ``target`` (``.NAME.tmp-*``, ``.NAME.old-*``) that
    killed writers left beside it; a backup whose target is gone is put back."""
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    sweep_dead(target.parent, f".{target.name}.tmp-")
    sweep_dead(target.parent, f".{target.name}.old-", restore_to=target)


#: The kinds of temp folder datadiet makes in ``$TMPDIR``: any of them makes a run sweep all.
TEMP_KINDS = ("datadiet-run-", "datadiet-load-", "datadiet-step-")


def owned_temp_dir(prefix: str, parent: str | os.PathLike | None = None) -> Path:
    """``mkdtemp`` under ``parent`` (default ``$TMPDIR``) with an owner in its name, after
    sweeping datadiet's temp folders of dead processes there."""
    folder = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    for kind in dict.fromkeys((prefix, *TEMP_KINDS)):
        sweep_dead(folder, kind)
    try:
        return Path(tempfile.mkdtemp(prefix=_owned(prefix), dir=folder))
    except OSError as exc:
        if is_no_space(exc):
            raise _no_space(exc, folder, "a temp folder") from exc
        raise


# -- the swap ---------------------------------------------------------------------------------


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if nothing is at ``dst``: ``FileExistsError`` otherwise.

    Linux's ``renameat2(RENAME_NOREPLACE)`` makes the check and the move one step (a plain
    rename would silently replace an empty folder someone just made); elsewhere, or on a file
    system without it, a check right before the rename is as close as POSIX gets.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                     _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _no_space(exc: OSError, where: Path, what: str) -> NoSpaceError:
    path = exc.filename or where
    return NoSpaceError(f"{path}: no space left on the device while writing {what} (in "
                        f"{where}); free space there or write {what} elsewhere")


def _swap_folder(tmp: Path, target: Path, guard: ReplaceGuard | None) -> None:
    """Move the finished folder ``tmp`` onto ``target``, re-checking at this moment what is
    there: the check the run made at its start may be hours old.

    Nothing there: one no-replace rename. Something there: ``guard`` decides on it, it is
    renamed aside, and ``guard`` decides again on what was actually moved (a folder the user
    put there between the two is renamed back, untouched); only then does the new folder go
    in and the old one get deleted.
    """
    with suppress(FileExistsError):
        _rename_noreplace(tmp, target)
        return
    if guard is not None:
        guard(target)
    backup = target.with_name(f".{target.name}.old-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(target, backup)
    if guard is not None:
        try:
            guard(backup)
        except BaseException:
            with suppress(OSError):
                _rename_noreplace(backup, target)
            raise
    try:
        _rename_noreplace(tmp, target)
    except FileExistsError:
        raise OutputError(f"{target}: something was created there while the old output was "
                          f"being replaced; the old output is kept at {backup}, nothing "
                          "new was written") from None
    _remove(backup)


@contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False,
                guard: ReplaceGuard | None = None) -> Iterator[Path]:
    """THE atomic writer: yield a hidden temp path beside ``target``; rename onto it on success.

    Every file or folder datadiet writes goes through here (text, JSON, Parquet shards,
    checkpoints, converted models), so a crash or a signal never leaves a half-written output:
    the temp path is removed on any exception (``KeyboardInterrupt`` and the ``SystemExit``
    that :func:`install_signal_cleanup` raises for SIGTERM included), and the temp names of
    killed runs are swept by the next writer of the same target.

    A folder ``target`` that is a symlink is written where it points (the link stays). An
    existing folder is swapped out by rename and deleted only after the new one is in place,
    and only if ``guard`` (run on it at swap time, see :func:`_swap_folder`) allows it.
    A full disk is a :class:`NoSpaceError` naming the path.
    """
    target = Path(target)
    if is_dir and target.is_symlink():
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    prefix = _owned(f".{target.name}.tmp-")
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        follow_umask(tmp, is_dir)
        if is_dir:  # some writers (safetensors) create 0600 files whatever the umask
            for inner in tmp.rglob("*"):
                if not inner.is_symlink():
                    follow_umask(inner, inner.is_dir())
            _swap_folder(tmp, target, guard)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        if is_no_space(exc) and not isinstance(exc, NoSpaceError):
            raise _no_space(exc, target.parent, str(target)) from exc
        raise
    finally:
        _remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, ensure_ascii=False))
