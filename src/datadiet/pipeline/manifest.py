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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datadiet.pipeline.io import MANIFEST_FILE, DataError, find_manifest, read_removed

__all__ = ["MANIFEST_VERSION", "Manifest", "StepReport", "explain", "jsonable"]

MANIFEST_VERSION = 1
#: Where the older layout kept the removed rows (its manifests may not name the file).
LEGACY_REMOVED_FILE = "removed/removed.parquet"


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


def explain(out: str | os.PathLike, ids: list[str]) -> list[str]:
    """One line per id: removed by which step and why, kept, or not an id of this run.

    Why read the kept ids too: "not removed" is not "kept" — a mistyped id is in neither, and
    saying "kept" for it would be a wrong answer, not a missing one.
    """
    folder = Path(out)
    if not folder.is_dir():
        raise DataError(f"{out}: no such folder")
    manifest_path = find_manifest(folder)
    if manifest_path is None:
        raise DataError(f"{out}: not a folder written by `datadiet curate` (no {MANIFEST_FILE})")
    try:
        manifest = Manifest.load(manifest_path)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest_path}: not a datadiet manifest ({exc})") from None
    wanted = pa.array(ids, pa.string())
    removed_path = folder / manifest.output.get("removed_file", LEGACY_REMOVED_FILE)
    if not removed_path.is_file():
        raise DataError(f"{removed_path}: missing (the manifest lists it)")
    removed = read_removed(removed_path, ["id", "step", "reason"])
    removed = removed.filter(pc.is_in(removed.column("id"), value_set=wanted)).to_pylist()
    by_id = {row["id"]: row for row in removed}
    kept: set[str] = set()
    id_field = manifest.input.get("id_field", "id")
    for shard in manifest.output.get("shards", []):
        column = pq.read_table(folder / shard, columns=[id_field]).column(id_field)
        kept.update(column.filter(pc.is_in(column, value_set=wanted)).to_pylist())
    lines = []
    for rid in ids:
        if rid in by_id:
            lines.append(f"{rid}: removed by {by_id[rid]['step']} ({by_id[rid]['reason']})")
        elif rid in kept:
            lines.append(f"{rid}: kept")
        else:
            lines.append(f"{rid}: unknown id (not in the input of this run)")
    return lines
