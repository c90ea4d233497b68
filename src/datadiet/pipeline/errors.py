"""The user-error classes: what the CLI reports in one line with exit status 2.

Why a module of its own, with only the standard library: the model stages (loading a model, a
tokenizer, a checkpoint) run on boxes without the data stack, yet a model that is not available
is the user's to fix like a bad spec line. Every room raises these, so the CLI tells a user's
mistake from a bug by class alone.
"""

from __future__ import annotations

import errno

__all__ = ["DataError", "NoSpaceError", "OutputError", "SpecError", "UserError",
           "is_no_space"]


class UserError(Exception):
    """A mistake in what the user asked for: the CLI prints the message and exits 2.

    Why a base class of its own: only these errors are the user's to fix, so only they lose
    their traceback. Anything else (a ``ValueError`` from a bug included) keeps its traceback
    and exits 1, so an internal failure is never dressed up as bad input.
    """


class DataError(UserError, ValueError):
    """Bad input: the message names the file and line (or row) and what is wrong."""


class SpecError(UserError, ValueError):
    """A bad spec or parameter: the message names the spec file, entry and field."""


class OutputError(UserError, FileExistsError):
    """An output that must not be written: it exists, holds an input, or cannot be written."""


class NoSpaceError(UserError, OSError):
    """A disk (or quota) filled up while writing: the message names the path and what needed
    the space, so the user knows which of output, ``$TMPDIR`` and cache to move or clean."""


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or quota, however the library that raised it spells it
    (pyarrow's writers raise ``OSError`` with the errno only in the message)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text
