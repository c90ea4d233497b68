"""Output guards: everything that can be known about an output folder before any work is done,
and asked again at the moment of the swap.

An output never is, holds or sits inside one of its inputs; an existing folder is replaced only
with ``overwrite`` and only if datadiet wrote it (it has a manifest), so ``--overwrite`` can
never delete a folder of the user's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from datadiet.pipeline.atomic import sweep_leftovers
from datadiet.pipeline.errors import OutputError
from datadiet.pipeline.io.layout import MANIFEST_FILE, find_manifest


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def refuse_output_over_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                              *, flag: str = "--out") -> Path:
    """Refuse an output that is, holds, or sits inside one of its inputs; return it resolved.

    Replacing such a folder deletes the input (``curate inp --out inp --overwrite`` did), and
    writing inside an input folder makes the next read of that folder take the output for data.
    """
    target = Path(out).expanduser().resolve()
    for source in inputs:
        src = Path(source).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if target == src or target in src.parents:
            raise OutputError(f"{flag} {out}: holds the input {source}; writing it would replace "
                              "the input. Choose another output folder")
        if src.is_dir() and src in target.parents:
            raise OutputError(f"{flag} {out}: is inside the input folder {source}; choose an "
                              "output folder outside it")
    return target


def check_output_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
                     overwrite: bool = False, flag: str = "--out") -> Path:
    """Everything that can be known about an output folder before any work is done.

    It must not be or hold an input; an existing folder is replaced only with ``overwrite``
    and only if datadiet wrote it (it has a manifest, see :func:`find_manifest`), so
    ``--overwrite`` can never
    delete a folder of the user's own; and its location must be writable, so a permission
    problem shows before the work, not after it. The writer asks the same again at the
    moment it replaces the folder (:func:`output_guard`).
    """
    target = refuse_output_over_inputs(out, inputs, flag=flag)
    if _nearest_existing(target.parent) == target.parent:
        sweep_leftovers(out)  # a killed run's temp copy; its old output, if it was mid-swap
    if target.exists():
        refuse_to_replace(target, out, overwrite, flag)
    parent = _nearest_existing(target.parent)
    if not parent.is_dir():
        raise OutputError(f"{flag} {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: cannot write in {parent} (permission denied)")
    return target


def refuse_to_replace(existing: Path, out: str | os.PathLike, overwrite: bool,
                      flag: str = "--out") -> None:
    """Raise unless the folder at ``existing`` may be replaced: ``overwrite`` was given and
    datadiet wrote it (its marker, a manifest where :func:`find_manifest` looks, is there)."""
    if not existing.is_dir():
        raise OutputError(f"{flag} {out}: exists and is not a folder")
    if not overwrite:
        raise OutputError(f"{flag} {out}: output exists (pass --overwrite to replace it)")
    if find_manifest(existing) is None:
        raise OutputError(f"{flag} {out}: exists and was not written by datadiet (no "
                          f"{MANIFEST_FILE}); refusing to replace it even with --overwrite")


def output_guard(out: str | os.PathLike, overwrite: bool, flag: str = "--out"
                 ) -> Callable[[Path], None]:
    """The writer's check at swap time (see :func:`~datadiet.pipeline.atomic.atomic_path`):
    what is at ``out`` now may have been made while the run went on."""

    def guard(existing: Path) -> None:
        try:
            refuse_to_replace(existing, out, overwrite, flag)
        except OutputError as exc:
            raise OutputError(f"{exc} — it appeared or changed while this run was going on; "
                              "it was left as it is and nothing was written") from None

    return guard
