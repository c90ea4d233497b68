"""The compute ledger: tokens, analytic FLOPs, wall time and peak memory, per stage.

Why analytic FLOPs: ``torch.utils.flop_counter`` misses SDPA on CPU and every elementwise kernel,
and a hardware counter is not portable. Following the PaLM paper (appendix B) and nanoGPT, a
dense decoder spends per token

* training:  ``6·N + 12·L·d_attn·T``
* inference: ``2·N +  4·L·d_attn·T``  (one forward pass, a third of training)

where ``N`` is the number of parameters that take part in a matmul for every token (all layer
weights plus the output projection; the embedding *lookup* is free), ``L`` the number of layers,
``d_attn = n_heads·head_dim`` and ``T`` the context length attended over. Every report in
datadiet comes from this one formula, so two ledgers are always comparable.

Stages form a tree: a stage opened inside another is its child (``step:perplexity/lm-scoring``),
and the totals never count anything twice — tokens and FLOPs are booked on exactly one stage,
and the total time is the time of the top-level stages, which already contains their children's.
A stage opened ``at_root`` (model loading) is a top-level stage wherever it runs, and its time is
taken out of the stages it interrupted: loading a model is the run's cost, not the cost of the
first step that happened to need it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil

from datadiet.kernels.flops import ModelShape

__all__ = ["MODEL_LOADING", "Ledger", "ModelShape", "StageRecord"]

#: Separates the levels of a stage's path: ``"step:perplexity/lm-scoring"``.
SEP = "/"
#: The stage every model load is booked on (opened ``at_root``).
MODEL_LOADING = "model-loading"


@dataclass
class StageRecord:
    """What one stage spent. ``name`` is its path in the tree of stages (``a/b`` is ``b``
    inside ``a``); ``seconds`` include the time of its children."""

    name: str
    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    extra: dict = field(default_factory=dict)

    def add(self, tokens: int = 0, flops: float = 0.0) -> None:
        self.tokens += int(tokens)
        self.flops += float(flops)

    @property
    def leaf(self) -> str:
        """The stage's own name, without its parents."""
        return self.name.rsplit(SEP, 1)[-1]

    @property
    def parent(self) -> str | None:
        """The path of the enclosing stage, or ``None`` for a top-level stage."""
        return self.name.rsplit(SEP, 1)[0] if SEP in self.name else None


class _PeakMemorySampler:
    """Samples this process's RSS (and CUDA peak, if any) while a stage runs.

    A sampler thread is the only portable way to get a per-stage peak on CPU: ``ru_maxrss`` is a
    process-lifetime maximum and tracemalloc does not see tensor allocations. CUDA is asked only
    when torch is already imported: a run without model stages must never pay for importing it.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cuda = False

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakMemorySampler:
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                self._cuda = True
        except Exception:  # a broken CUDA setup: RSS sampling still works
            self._cuda = False
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        if self._cuda:
            self.peak = max(self.peak, int(sys.modules["torch"].cuda.max_memory_allocated()))


@dataclass
class _OpenStage:
    """A stage being timed: when it started, and how much of that time belongs elsewhere."""

    record: StageRecord
    start: float
    excluded: float = 0.0  # seconds of ``at_root`` stages that ran inside it

    def elapsed(self, now: float) -> float:
        return now - self.start - self.excluded


class Ledger:
    """Per-stage tallies of tokens, FLOPs, seconds and peak memory, as a tree of stages.

    Use ``with ledger.stage("perplexity") as rec: ...; rec.add(tokens, flops)``. A stage opened
    inside another is its child; re-opening a stage that is already open (a scorer timing the
    stage its caller opened) changes nothing; stages with the same path accumulate.
    ``add``/``record`` book on the open stage of that name if there is one, else on a top-level
    stage. ``compare`` puts two ledgers side by side — the product's headline ("full data" vs
    "curated", "original prompt" vs "compressed"). Meant for one thread at a time.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.stages: dict[str, StageRecord] = {}
        self._open: list[_OpenStage] = []

    def _get(self, path: str) -> StageRecord:
        if path not in self.stages:
            self.stages[path] = StageRecord(path)
        return self.stages[path]

    def _open_named(self, name: str) -> _OpenStage | None:
        return next((f for f in reversed(self._open) if f.record.leaf == name), None)

    def record(self, name: str) -> StageRecord:
        """The open stage called ``name`` (innermost), else the top-level stage ``name``."""
        frame = self._open_named(name)
        return frame.record if frame is not None else self._get(name)

    @contextmanager
    def stage(
        self, name: str, measure_memory: bool = True, *, at_root: bool = False
    ) -> Iterator[StageRecord]:
        """Time a stage: a child of the innermost open stage, or top-level with ``at_root``.

        ``at_root`` stages (model loading) are taken out of the time of the stages they
        interrupt, so each second is booked once and on the stage that caused it.
        """
        frame = None if at_root else self._open_named(name)
        if frame is not None:  # already being timed by a caller
            yield frame.record
            return
        parent = self._open[-1].record.name if self._open and not at_root else None
        rec = self._get(name if parent is None else parent + SEP + name)
        frame = _OpenStage(rec, time.perf_counter())
        outer = list(self._open)
        self._open.append(frame)
        try:
            if measure_memory:
                with _PeakMemorySampler() as sampler:
                    yield rec
                rec.peak_memory_bytes = max(rec.peak_memory_bytes, sampler.peak)
            else:
                yield rec
        finally:
            self._open.remove(frame)
            elapsed = frame.elapsed(time.perf_counter())
            rec.seconds += elapsed
            if at_root:
                for enclosing in outer:
                    enclosing.excluded += elapsed

    def add(self, name: str, tokens: int = 0, flops: float = 0.0) -> None:
        self.record(name).add(tokens, flops)

    def absorb(self, other: Ledger) -> None:
        """Book another ledger's stages here: what a curation map spent on a worker (or on
        the map thread), merged in the driver. Its top-level stages become children of the
        innermost open stage (the step's), except model loading, which stays top-level as
        wherever it runs; tokens, FLOPs and seconds add up, peaks take the highest."""
        parent = self._open[-1].record.name if self._open else None
        for rec in other.stages.values():
            root = rec.name.split(SEP, 1)[0]
            name = rec.name if parent is None or root == MODEL_LOADING \
                else parent + SEP + rec.name
            mine = self._get(name)
            mine.add(rec.tokens, rec.flops)
            mine.seconds += rec.seconds
            mine.peak_memory_bytes = max(mine.peak_memory_bytes, rec.peak_memory_bytes)

    def loading_seconds(self) -> float:
        """Seconds booked on model loading (kept out of the seconds of the work around it)."""
        rec = self.stages.get(MODEL_LOADING)
        return rec.seconds if rec is not None else 0.0

    def _seconds(self, rec: StageRecord, now: float) -> float:
        """Seconds so far, counting the running part of a stage that is still open."""
        running = sum(f.elapsed(now) for f in self._open if f.record is rec)
        return rec.seconds + running

    def _snapshot(self) -> list[StageRecord]:
        now = time.perf_counter()
        out = []
        for rec in self.stages.values():
            copy = StageRecord(**asdict(rec))
            copy.seconds = self._seconds(rec, now)
            out.append(copy)
        return out

    @property
    def total(self) -> StageRecord:
        """Tokens and FLOPs of every stage, seconds of the top-level ones, the highest peak."""
        tot = StageRecord("total")
        for rec in self._snapshot():
            tot.tokens += rec.tokens
            tot.flops += rec.flops
            if rec.parent is None:
                tot.seconds += rec.seconds
            tot.peak_memory_bytes = max(tot.peak_memory_bytes, rec.peak_memory_bytes)
        return tot

    def children(self, name: str | None = None) -> list[StageRecord]:
        """The stages directly inside ``name`` (``None``: the top-level stages)."""
        return [r for r in self.stages.values() if r.parent == name]

    def to_dict(self) -> dict:
        """Every stage (paths give the tree) and the total; open stages count their time so far,
        so a checkpoint written mid-stage keeps the seconds already spent."""
        return {
            "label": self.label,
            "stages": [asdict(r) for r in self._snapshot()],
            "total": asdict(self.total),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Ledger:
        led = cls(data.get("label", ""))
        for st in data.get("stages", []):
            led.stages[st["name"]] = StageRecord(**st)
        return led

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def compare(self, other: Ledger) -> dict:
        """Totals of ``self`` (baseline) and ``other`` and the ratio baseline / other."""
        a, b = self.total, other.total

        def ratio(x: float, y: float) -> float | None:
            return (x / y) if y else None

        return {
            "baseline": self.label or "baseline",
            "candidate": other.label or "candidate",
            "tokens": [a.tokens, b.tokens, ratio(a.tokens, b.tokens)],
            "flops": [a.flops, b.flops, ratio(a.flops, b.flops)],
            "seconds": [a.seconds, b.seconds, ratio(a.seconds, b.seconds)],
            "peak_memory_bytes": [
                a.peak_memory_bytes,
                b.peak_memory_bytes,
                ratio(a.peak_memory_bytes, b.peak_memory_bytes),
            ],
        }

    def format_comparison(self, other: Ledger) -> str:
        cmp = self.compare(other)
        lines = [f"{'':<20}{cmp['baseline']:>18}{cmp['candidate']:>18}{'saved x':>10}"]
        for key in ("tokens", "flops", "seconds", "peak_memory_bytes"):
            a, b, r = cmp[key]
            lines.append(f"{key:<20}{a:>18.4g}{b:>18.4g}{(r or 0):>10.2f}")
        return "\n".join(lines)
