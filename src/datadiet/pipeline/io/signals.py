"""Cleaning up on every way out: scratch folders removed on success, error, Ctrl-C and SIGTERM.

SIGTERM (what SLURM, Kubernetes and ``kill`` send) kills Python without unwinding unless it is
turned into an exception; :func:`install_signal_cleanup` does that, so every ``finally`` —
scratch folders, the atomic writer's temp outputs — runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datadiet.pipeline.atomic import owned_temp_dir
from datadiet.pipeline.errors import NoSpaceError, is_no_space


@contextmanager
def scratch_dir(prefix: str, parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A private temp folder that is removed on success, error, Ctrl-C and (with
    :func:`install_signal_cleanup`) SIGTERM: nothing of a run stays in ``$TMPDIR``. Its name
    carries the run's owner, so a later run sweeps the folder a SIGKILLed one left."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = owned_temp_dir(prefix, parent)
    try:
        yield path
    except OSError as exc:
        if is_no_space(exc) and not isinstance(exc, NoSpaceError):
            raise NoSpaceError(f"{exc.filename or path}: no space left on the device of the "
                               f"run's scratch folder {path.parent} (TMPDIR); set TMPDIR to a "
                               "folder on a disk with room") from exc
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so every ``finally`` runs (exit status 143)."""


def install_signal_cleanup() -> None:
    """Turn SIGTERM (what SLURM, Kubernetes and ``kill`` send) into :class:`Terminated` (143).

    Python's default for SIGTERM kills the process without unwinding, so no ``finally`` runs
    and temp folders and half-written ``.OUT.tmp-*`` outputs stay behind. Raised as an
    exception instead, every :func:`atomic_path` and :func:`scratch_dir` cleans up on the way
    out. Only the main thread may set handlers; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def _terminate(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
