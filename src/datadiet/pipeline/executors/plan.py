"""A curation plan (the spec's steps, compiled) and the interface every executor implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datadiet.pipeline.io import StreamedCorpus
from datadiet.pipeline.records import RecordFormat
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import RecordView, Step, StepContext

#: The runner's check of a plan against the input's columns and record format (every column
#: a step reads is there, instruction data where a step needs it): raises a user error.
PlanCheck = Callable[[Sequence[str], RecordFormat | None], None]


def maps_during_read(step: Step, index: int) -> bool:
    """Whether a step maps every row while the file is read, or only the rows still alive when
    its turn comes.

    A row-local step (its decision for a row reads that row alone, like the quality rules)
    after another step decides the same on any subset of rows, so it waits for the survivors
    and spends nothing on rows already removed (the quality features are the dearest map);
    every other step maps during the read, side by side with the reader, except a step
    whose map is dear (``maps_survivors``: a model scores or embeds each row), which waits
    for the survivors too, and a step whose map needs a global pass over its input first
    (:meth:`~datadiet.pipeline.steps.Step.global_pass`), which maps at its turn wherever it
    stands.
    """
    if step.global_pass() is not None:
        return False
    return not ((step.row_local or step.maps_survivors) and index > 0)


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: the step, its place in the spec, and when its map runs."""

    index: int
    step: Step

    @property
    def maps_during_read(self) -> bool:
        return maps_during_read(self.step, self.index)


@dataclass
class Plan:
    """The spec's steps in order, each a map plus a reduce (see :mod:`datadiet.pipeline.executors`)."""

    steps: tuple[PlannedStep, ...]
    #: the runner's check, run by :meth:`begin` before the first map
    check: PlanCheck | None = None
    view: RecordView | None = field(default=None, init=False)  #: set by :meth:`begin`

    @classmethod
    def compile(cls, built: Sequence[Step], check: PlanCheck | None = None) -> Plan:
        return cls(tuple(PlannedStep(i, step) for i, step in enumerate(built)), check)

    @property
    def without_map(self) -> list[str]:
        """The steps that do not split into a map and a reduce (a plug-in step with only
        ``select``): no executor runs them; every built-in step splits."""
        return [p.step.name for p in self.steps if not p.step.splits_into_row_features()]

    @property
    def read_maps(self) -> list[PlannedStep]:
        """The steps whose maps run while the corpus is read."""
        return [p for p in self.steps if p.maps_during_read]

    @property
    def begun(self) -> bool:
        return self.view is not None

    def begin(self, columns: Sequence[str], fmt: RecordFormat | None,
              ctx: StepContext) -> RecordView:
        """Once the reader knows the columns and the record format, before the first map:
        the runner's check, then each step's :meth:`~datadiet.pipeline.steps.Step.prepare`
        (in the driver). Idempotent: an executor calls it at the first batch, or after the
        read when there was none."""
        if self.view is None:
            ctx.record_format = fmt
            if self.check is not None:
                self.check(list(columns), fmt)
            for planned in self.steps:
                planned.step.prepare(ctx)
            self.view = RecordView.of(ctx)
        return self.view

    def map_columns(self, steps: Sequence[PlannedStep], columns: Sequence[str]) -> list[str]:
        """The columns the maps of ``steps`` read, in the batches' order (what a Dask
        partition ships); the text column alone for text-only steps."""
        assert self.view is not None, "begin() first"
        wanted = {c for p in steps for c in p.step.map_columns(self.view, list(columns))}
        return [c for c in columns if c in wanted]


class Executor(ABC):
    """Where a plan's maps and reduces run. The runner (``curate_path``) calls, in order:
    :meth:`read` once, :meth:`reduce` once per step, :meth:`close` always."""

    @abstractmethod
    def read(self, source: str | os.PathLike, plan: Plan, work: Path, options: dict[str, Any],
             ctx: StepContext) -> StreamedCorpus:
        """Read the corpus (the one reader, into ``work``), running the read-time maps."""

    @abstractmethod
    def reduce(self, planned: PlannedStep, alive: np.ndarray, names: Any,
               ctx: StepContext) -> tuple[Selection, float]:
        """The step's Selection over the ``alive`` input rows (``names``: their ids), and the
        seconds its maps took before this call (booked on the step)."""

    def close(self) -> None:  # noqa: B027 - most executors hold nothing
        """Release what the run held (features, partitions); called however the run ends."""
