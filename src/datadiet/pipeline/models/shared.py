"""One model service per process, reused by every curation map that runs in it.

Why: an executor maps a corpus in many small pieces (a Dask task per partition, a batch per
call on the map thread), and each piece would otherwise build its own scorer or embedder. The
weights are cached per process by the loaders already; this keeps the whole service (the
scorer's runner and tokenizer, the embedder's open cache) so that a worker process loads a
model once, on the first map that needs it, and every later task there reuses it. The device
is the loaders' default: the process's GPU when it has one, else the CPU.

A service books its tokens and FLOPs on a ledger; a shared one books, while a map holds it,
on that map's own ledger (which the executor merges into the run's, under the step). A lock
per service keeps two threads of one process from booking on each other's ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.embedding import Embedder
from datadiet.pipeline.models.scoring import LMScorer

__all__ = ["shared_embedder", "shared_lm_scorer"]

#: (kind, model, thread) -> (service, lock). Per thread too: the embedder's SQLite cache
#: connection belongs to the thread that opened it (the weights are shared all the same).
_SERVICES: dict[tuple[str, str | None, int], tuple[Any, threading.Lock]] = {}
_CREATING = threading.Lock()


@contextmanager
def _held(kind: str, model: str | None, make: Callable[[Ledger], Any],
          ledger: Ledger) -> Iterator[Any]:
    key = (kind, model, threading.get_ident())
    with _CREATING:
        if key not in _SERVICES:
            _SERVICES[key] = (make(ledger), threading.Lock())  # loading booked on ``ledger``
        service, lock = _SERVICES[key]
    with lock:
        previous, service.ledger = service.ledger, ledger
        try:
            yield service
        finally:
            service.ledger = previous


@contextmanager
def shared_lm_scorer(model: str | None, ledger: Ledger) -> Iterator[LMScorer]:
    """This process's :class:`LMScorer` for ``model`` (``None``: the default), booking on
    ``ledger`` while the block runs."""
    with _held("lm", model, lambda led: LMScorer(model, ledger=led), ledger) as scorer:
        yield scorer


@contextmanager
def shared_embedder(model: str | None, ledger: Ledger) -> Iterator[Embedder]:
    """This process's :class:`Embedder` for ``model`` (``None``: the default), booking on
    ``ledger`` while the block runs."""
    with _held("embedder", model, lambda led: Embedder(model, ledger=led), ledger) as embedder:
        yield embedder
