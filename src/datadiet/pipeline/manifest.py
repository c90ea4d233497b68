"""The manifest beside every curated output: what ran, on what, what it removed and why.

Why a module of its own: the runner writes it, ``datadiet why`` and the flows read it, and a
manifest given as ``--spec`` repeats a run, so its shape is a contract separate from the runner.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MANIFEST_VERSION", "Manifest", "StepReport", "jsonable"]

MANIFEST_VERSION = 1


@dataclass
class StepReport:
    """One step's line in the manifest."""

    name: str
    params: dict[str, Any]
    rows_in: int
    rows_out: int
    removed: dict[str, int]
    seconds: float
    tokens_scored: int = 0
    flops: float = 0.0
    peak_memory_bytes: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything needed to audit and repeat a curation run."""

    input: dict[str, Any]
    spec: list[dict[str, dict[str, Any]]]
    steps: list[StepReport] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION
    datadiet_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [asdict(s) for s in self.steps]
        return data

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        steps = [StepReport(**s) for s in data.get("steps", [])]
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "steps"}
        return cls(steps=steps, **fields)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def summary_table(self) -> str:
        """The short table printed at the end of a run: rows in/out and removals by reason."""
        lines = [f"{'step':<18}{'rows in':>10}{'rows out':>10}{'seconds':>9}  removed (by reason)"]
        for s in self.steps:
            reasons = ", ".join(f"{k}={v}" for k, v in s.removed.items()) or "-"
            lines.append(f"{s.name:<18}{s.rows_in:>10}{s.rows_out:>10}{s.seconds:>9.2f}  {reasons}")
        skipped = self.input.get("skipped", {}).get("count", 0)
        if skipped:
            lines.append(f"(input: {skipped} bad rows skipped; see manifest input.skipped)")
        if self.steps:
            first, last = self.steps[0].rows_in, self.steps[-1].rows_out
            kept = 100.0 * last / first if first else 0.0
            lines.append(f"kept {last} of {first} rows ({kept:.1f}%)")
        return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj



