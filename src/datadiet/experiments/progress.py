"""Which stage runs and how long is left: the progress display of a multi-stage run.

A run of several stages (curate, train, build prompts, report) knows its plan up front: each
stage's expected seconds, estimated from its size. Time left is the plan's remaining seconds
scaled by how fast the run has gone so far (elapsed time over the planned time of the stages
already done), so a machine twice as busy as the estimate assumed shows twice the time left
after the first stage. Lines go to a ``say`` callable (``print`` by default; a flow passes its
logger), and an optional ``on_fraction`` receives the done fraction (a Prefect progress
artifact).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

__all__ = ["StageClock", "format_seconds", "plan_efficiency"]


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StageClock:
    """Announce each stage with its number, the elapsed time and an estimate of the time left."""

    def __init__(self, plan: Sequence[tuple[str, float]], say: Callable[[str], None] = print,
                 on_fraction: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not plan:
            raise ValueError("a StageClock needs at least one planned stage")
        self.plan = [(name, max(float(seconds), 1e-3)) for name, seconds in plan]
        self.say, self.on_fraction, self.clock = say, on_fraction, clock
        self.started = clock()
        self.done: set[str] = set()
        self.current: str | None = None

    def _planned(self, names: set[str] | None = None) -> float:
        return sum(s for n, s in self.plan if names is None or n in names)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def seconds_left(self) -> float:
        """Planned seconds not yet done, scaled by the pace so far (plan as-is before any stage
        finished)."""
        planned_done = self._planned(self.done)
        pace = self.elapsed() / planned_done if planned_done else 1.0
        return max(0.0, (self._planned() - planned_done) * pace
                   - (0.0 if planned_done else self.elapsed()))

    def fraction(self) -> float:
        return self._planned(self.done) / self._planned()

    def start(self, name: str, detail: str = "") -> None:
        """Mark ``name`` (a planned stage) as running and print the progress line."""
        names = [n for n, _ in self.plan]
        if name not in names:
            raise ValueError(f"stage {name!r} is not in the plan {names}")
        if self.current is not None and self.current != name:
            self.done.add(self.current)
        self.current = name
        index = names.index(name) + 1
        suffix = f" — {detail}" if detail else ""
        self.say(f"[stage {index}/{len(names)}: {name}{suffix}] elapsed "
                 f"{format_seconds(self.elapsed())}, about {format_seconds(self.seconds_left())} left")
        if self.on_fraction is not None:
            self.on_fraction(self.fraction())

    def finish(self) -> None:
        """All stages done: print the total time."""
        if self.current is not None:
            self.done.add(self.current)
        self.current = None
        self.say(f"[done] {len(self.done)} stages in {format_seconds(self.elapsed())}")
        if self.on_fraction is not None:
            self.on_fraction(1.0)


#: A source whose size is unknown (a hub dataset) is planned as this many bytes.
UNKNOWN_CORPUS_BYTES = 1 << 20


def plan_efficiency(corpus_bytes: int | None, train_runs: int, train_tokens_per_run: int,
                    prompts: int, tokens_per_second: float = 5000.0,
                    sft_tokens: int = 0) -> list[tuple[str, float]]:
    """The stages of the efficiency chain with first-guess seconds (the pace corrects them).

    The guesses are rough on purpose — curation per byte on disk (known without reading the
    corpus), training per token of a small model on CPU, prompts per compressed prompt — since
    only their proportions matter once the first stage has run.
    """
    size = UNKNOWN_CORPUS_BYTES if corpus_bytes is None else corpus_bytes
    plan = [("curate", 10.0 + 2e-5 * size),
            ("train", train_runs * train_tokens_per_run / tokens_per_second)]
    if sft_tokens:
        plan.append(("fine-tune", 5.0 + sft_tokens / tokens_per_second))
    if prompts:
        plan.append(("prompts", 15.0 + 3.0 * prompts))
        plan.append(("score prompts", 20.0 + 8.0 * prompts))
    plan.append(("report", 10.0))
    return plan
