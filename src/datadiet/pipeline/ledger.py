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
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil

from datadiet.kernels.flops import ModelShape

__all__ = ["Ledger", "ModelShape", "StageRecord"]


@dataclass
class StageRecord:
    """What one stage spent."""

    name: str
    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    extra: dict = field(default_factory=dict)

    def add(self, tokens: int = 0, flops: float = 0.0) -> None:
        self.tokens += int(tokens)
        self.flops += float(flops)


class _PeakMemorySampler:
    """Samples this process's RSS (and CUDA peak, if any) while a stage runs.

    A sampler thread is the only portable way to get a per-stage peak on CPU: ``ru_maxrss`` is a
    process-lifetime maximum and tracemalloc does not see tensor allocations.
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
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                self._cuda = True
        except Exception:  # torch missing or CUDA broken: RSS sampling still works
            self._cuda = False
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        if self._cuda:
            import torch

            self.peak = max(self.peak, int(torch.cuda.max_memory_allocated()))


class Ledger:
    """Per-stage tallies of tokens, FLOPs, seconds and peak memory.

    Use ``with ledger.stage("perplexity") as rec: ...; rec.add(tokens, flops)``. Stages with the
    same name accumulate. ``compare`` puts two ledgers side by side — the product's headline
    ("full data" vs "curated", "original prompt" vs "compressed").
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.stages: dict[str, StageRecord] = {}

    def record(self, name: str) -> StageRecord:
        if name not in self.stages:
            self.stages[name] = StageRecord(name)
        return self.stages[name]

    @contextmanager
    def stage(self, name: str, measure_memory: bool = True) -> Iterator[StageRecord]:
        rec = self.record(name)
        start = time.perf_counter()
        if measure_memory:
            with _PeakMemorySampler() as sampler:
                yield rec
            rec.peak_memory_bytes = max(rec.peak_memory_bytes, sampler.peak)
        else:
            yield rec
        rec.seconds += time.perf_counter() - start

    def add(self, name: str, tokens: int = 0, flops: float = 0.0) -> None:
        self.record(name).add(tokens, flops)

    @property
    def total(self) -> StageRecord:
        tot = StageRecord("total")
        for rec in self.stages.values():
            tot.tokens += rec.tokens
            tot.flops += rec.flops
            tot.seconds += rec.seconds
            tot.peak_memory_bytes = max(tot.peak_memory_bytes, rec.peak_memory_bytes)
        return tot

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "stages": [asdict(r) for r in self.stages.values()],
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
