"""What every datadiet flow shares: where results persist, how tasks cache and retry.

Why caching is keyed by hand instead of Prefect's default ``INPUTS`` policy: Prefect hashes
whatever a task receives, and an unhashable or huge input (a Dataset, a tensor) either silently
disables the cache or costs a pass over the data. datadiet tasks only ever receive small values
— paths, fingerprints of the bytes behind those paths, step specs — so the key is a hash of
those values, checked to be plain JSON so that a big object passed by mistake fails loudly.

Results are persisted (Prefect's cache needs them) as JSON under a storage folder the user
chooses per run (``storage`` parameter, else ``$DATADIET_FLOW_STORAGE``, else
``~/.cache/datadiet/flows``). Nothing else is written there: a run's work files (the reader's
scratch copy, spilled features) live in the library's scratch folder and go when the run ends.

Parameters are flat, one typed parameter per setting, as Prefect's own flows take them: that is
what the UI renders as a form and what ``prefect deployment run --param name=value`` sets. Each
flow also has a pydantic model of the same fields (``CurateParams`` ...) that checks what a type
cannot (a file exists, a spec builds, two fields agree); the flow builds it from its arguments
before any task runs, and ``datadiet serve`` builds it from a schedule's parameters at start-up.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, ConfigDict, Field

from datadiet import __version__
from datadiet.pipeline.manifest import jsonable

STORAGE_ENV = "DATADIET_FLOW_STORAGE"
#: I/O errors that retrying cannot fix: the user's input or output path is wrong.
PERMANENT_IO_ERRORS = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                       PermissionError)


def default_storage() -> str:
    return os.environ.get(STORAGE_ENV) or str(Path("~/.cache/datadiet/flows").expanduser())


class FlowParams(BaseModel):
    """Base of every flow's checked parameters: unknown fields are errors, every field is given
    (the defaults live in the flow's signature only), storage is configurable."""

    model_config = ConfigDict(extra="forbid")

    storage: str | None = Field(description="Folder for persisted task results (the cache); "
                                f"empty = ${STORAGE_ENV} or ~/.cache/datadiet/flows.")

    def storage_path(self) -> Path:
        return Path(self.storage or default_storage()).expanduser().resolve()

    @classmethod
    def of_call(cls, flow_fn: Callable, parameters: dict[str, Any]) -> FlowParams:
        """Check ``parameters`` as a call of ``flow_fn`` would take them (its defaults filled
        in); an unknown name or a bad value raises ValueError naming it."""
        try:
            bound = inspect.signature(flow_fn).bind(**parameters)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        bound.apply_defaults()
        return cls(**bound.arguments)


def short(value: Any) -> str:
    """A parameter as a run name shows it: a path by its last part, anything else as is."""
    if isinstance(value, str | os.PathLike) and os.sep in str(value).rstrip(os.sep):
        return Path(value).name
    return str(value)


class _ShortValues(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def flow_run_namer(template: str) -> Callable[[], str]:
    """A ``flow_run_name`` that formats ``template`` with the run's parameters, paths
    shortened: ``curate {source} → {out}/`` names a run ``curate corpus.jsonl → curated/``."""
    def name() -> str:
        return template.format_map(_ShortValues({k: short(v) for k, v in
                                                 flow_run.parameters.items()}))
    return name


def task_run_namer(template: str) -> Callable[..., str]:
    """A ``task_run_name`` like :func:`flow_run_namer`'s: short, no absolute storage paths."""
    def name(parameters: dict[str, Any]) -> str:
        return template.format_map(_ShortValues({k: short(v) for k, v in parameters.items()}))
    return name


def series_key(flow_name: str, dataset: str) -> str:
    """Artifact key of a flow's reports on one deployment or dataset: its runs' reports form a
    series in the UI, apart from those of other deployments and datasets."""
    name = deployment.name or Path(str(dataset).rstrip(os.sep)).name or "data"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{flow_name}-{name}".lower()).strip("-")
    return slug[:80].rstrip("-")


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (dict order does not matter)."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain_json(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


def small_inputs_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key: the task's name, datadiet's version and its (small, plain) parameters.

    Passing a Dataset, an array or a model to a cached task is a bug: the flow should pass its
    path and fingerprint instead. Failing here makes that bug visible the first time.
    """
    for name, value in parameters.items():
        if not _plain_json(value):
            raise TypeError(f"task {context.task.name}: parameter {name!r} is a "
                            f"{type(value).__name__}; pass paths and fingerprints between tasks")
    digest = stable_hash({"task": context.task.name, "version": __version__, "params": parameters})
    return f"datadiet-{context.task.name}-{digest[:32]}"


def inputs_key_without(*names: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """:func:`small_inputs_key` leaving out the parameters ``names``: those that say where or
    how a task runs (an executor's settings, the run's progress artifact), not what it
    computes. A result computed on a Dask cluster then serves a rerun in one process, and the
    other way round, which holds because every executor gives the same output."""
    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        return small_inputs_key(context, {k: v for k, v in parameters.items() if k not in names})
    return key


def retry_transient_io(task_: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a task only when it failed on an I/O error that may pass (a busy disk, a network
    file system); bad input, an existing output or a bug fail at once."""
    try:
        state.result()
    except PERMANENT_IO_ERRORS:
        return False
    except OSError:
        return True
    except BaseException:  # noqa: BLE001 - any other failure is not worth a retry
        return False
    return False


def cached_task(fn: Callable | None = None, **options: Any) -> Any:
    """``@task`` with datadiet's defaults: keyed on small inputs, JSON results, I/O retries."""
    defaults: dict[str, Any] = dict(
        # print() must not become log lines: the `datasets` fingerprinting inside the readers
        # and trainers lets dill print a bytecode listing (see the note above the curate flow).
        log_prints=False,
        cache_key_fn=small_inputs_key,
        persist_result=True,
        result_serializer="json",
        retries=2,
        retry_delay_seconds=1,
        retry_condition_fn=retry_transient_io,
    )
    defaults.update(options)
    if fn is None:
        return lambda f: task(f, **defaults)
    return task(fn, **defaults)


def stored(task_: Task, params: FlowParams) -> Task:
    """The task with its results persisted under the run's storage folder."""
    return task_.with_options(result_storage=params.storage_path() / "results")


def run_checked(task_: Task, still_valid: Callable[[Any], bool], /, **kwargs: Any) -> Any:
    """Call ``task_``; if a cached result points at files that are gone, run it once more.

    A cache hit only proves the task ran before with these inputs; if the user deleted the
    output since, the cached paths lie, so the task runs again with the cache refreshed.
    """
    result = task_(**kwargs)
    if still_valid(result):
        return result
    return task_.with_options(refresh_cache=True)(**kwargs)


def all_exist(paths: Iterable[str | os.PathLike]) -> bool:
    return all(Path(p).exists() for p in paths)
