"""The progress display: stage numbers, and a time-left estimate that learns the run's pace."""

from __future__ import annotations

import pytest

from datadiet.experiments.progress import StageClock, format_seconds, plan_efficiency


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_left_follows_the_pace_of_finished_stages() -> None:
    clock, lines, fractions = Clock(), [], []
    stages = StageClock([("curate", 10), ("train", 60), ("report", 10)], say=lines.append,
                        on_fraction=fractions.append, clock=clock)
    stages.start("curate")
    assert lines[-1] == "[stage 1/3: curate] elapsed 0:00, about 1:20 left"
    clock.now = 20.0  # curation took twice its plan: the machine is twice as slow
    stages.start("train", "full vs curated")
    assert lines[-1] == "[stage 2/3: train — full vs curated] elapsed 0:20, about 2:20 left"
    clock.now = 140.0
    stages.start("report")
    assert stages.seconds_left() == pytest.approx(20.0)
    stages.finish()
    assert lines[-1] == "[done] 3 stages in 2:20"
    assert fractions == [0.0, 0.125, 0.875, 1.0]


def test_unknown_stage_and_empty_plan_are_errors() -> None:
    with pytest.raises(ValueError, match="not in the plan"):
        StageClock([("a", 1)]).start("b")
    with pytest.raises(ValueError, match="at least one"):
        StageClock([])


def test_plan_and_formatting() -> None:
    plan = dict(plan_efficiency(corpus_bytes=500_000, train_runs=2, train_tokens_per_run=50_000,
                                prompts=0))
    assert list(plan) == ["curate", "train", "report"] and plan["train"] == 20.0
    assert "prompts" in dict(plan_efficiency(500, 2, 50_000, prompts=4))
    assert format_seconds(3725) == "1:02:05" and format_seconds(59.6) == "1:00"
