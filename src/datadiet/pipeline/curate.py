"""The curation runner: steps in order, a manifest that says what was removed and why.

``curate(dataset, steps)`` is the Python API; ``datadiet curate`` is the same call plus reading
and atomic writing. Each step returns a Selection on the rows still alive; the runner keeps an
index back to the input so that every removed row is reported against its original id, and the
manifest carries the whole spec so a run can be repeated from it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import Dataset

from datadiet import __version__
from datadiet.pipeline.io import (
    AtomicOutputDir,
    LoadedCorpus,
    OnError,
    atomic_write_text,
    content_id,
    load_corpus,
    write_parquet_shards,
)
from datadiet.pipeline.manifest import Manifest, StepReport, jsonable
from datadiet.pipeline.records import RecordFormat, parse_fields, sft_format, with_text
from datadiet.pipeline.steps import Step, StepContext, build_step


def parse_spec(spec: Any, source: str = "spec") -> list[tuple[str, dict[str, Any]]]:
    """Accept the YAML list form ``[{step: {params}}, ...]``, ``{"steps": [...]}``, or a manifest.

    Errors name the entry, so a typo in entry 3 says "entry 3".
    """
    if isinstance(spec, dict) and "spec" in spec and "steps" in spec:  # a manifest
        spec = spec["spec"]
    elif isinstance(spec, dict) and "steps" in spec:
        spec = spec["steps"]
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"{source}: expected a non-empty list of steps like `- exact_dedup: {{}}`")
    parsed = []
    for i, entry in enumerate(spec, start=1):
        if isinstance(entry, str):
            parsed.append((entry, {}))
            continue
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"{source}: entry {i} must be a mapping with one step name, got {entry!r}")
        (name, params), = entry.items()
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError(f"{source}: entry {i} ({name}): parameters must be a mapping")
        parsed.append((str(name), dict(params)))
    return parsed


def load_spec(path: str | os.PathLike) -> list[Step]:
    """Read a YAML/JSON spec file (or a manifest) into step objects."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    steps = []
    for i, (name, params) in enumerate(parse_spec(data, str(path)), start=1):
        try:
            steps.append(build_step(name, params))
        except ValueError as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from exc
    return steps


def load_spec_fields(path: str | os.PathLike) -> RecordFormat | None:
    """The spec's ``fields:`` entry (how to read fine-tuning records); ``None`` means detect.

    A manifest given as the spec repeats the format its run read.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return None
    value = data.get("fields")
    if value is None and "spec" in data:
        value = data.get("input", {}).get("record_format")
    try:
        return parse_fields(value)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def score_column(step_name: str, columns: Sequence[str]) -> str:
    """The output column of a step's scores: ``<step>_score``, numbered if taken."""
    name, n = f"{step_name}_score", 1
    while name in columns:
        n += 1
        name = f"{step_name}_score_{n}"
    return name


def spec_of(steps: Sequence[Step]) -> list[dict[str, dict[str, Any]]]:
    return [{s.name: jsonable(s.params())} for s in steps]


# -- running --------------------------------------------------------------------------------


@dataclass
class CurateResult:
    dataset: Dataset
    manifest: Manifest
    removed: pa.Table  # id, step, reason, for every removed row

    def why(self, record_id: str) -> str | None:
        """The reason a record was removed, or None if it was kept (or never existed)."""
        ids = self.removed.column("id").to_pylist()
        if record_id in ids:
            i = ids.index(record_id)
            return f"{self.removed.column('step')[i].as_py()}: {self.removed.column('reason')[i].as_py()}"
        return None


def curate(
    dataset: Dataset,
    steps: Sequence[Step | str | dict],
    *,
    text_field: str = "text",
    id_field: str = "id",
    ctx: StepContext | None = None,
    show_progress: bool = False,
    input_info: dict[str, Any] | None = None,
    fields: RecordFormat | str | dict | None = None,
) -> CurateResult:
    """Run ``steps`` in order on ``dataset``; return the kept rows, the manifest and removals.

    ``steps`` may be Step objects, step names, or ``{name: params}`` mappings. An instruction
    dataset (``fields``, or detected from its columns) gets the rendered row as its text
    column. Every step's scores become a column ``<step>_score`` of the output and of the
    removed table, so later steps (``deita``) and the user can read them.
    """
    built: list[Step] = []
    for s in steps:
        if isinstance(s, Step):
            built.append(s)
        elif isinstance(s, str):
            built.append(build_step(s))
        else:
            (name, params), = parse_spec([s])
            built.append(build_step(name, params))
    fmt = fields if isinstance(fields, RecordFormat) else parse_fields(fields, text_field)
    if ctx is not None and fmt is None:
        fmt = ctx.record_format
    if text_field not in dataset.column_names:
        try:
            fmt = sft_format(dataset.column_names, fmt, text_field, step="curate")
        except ValueError as exc:
            raise ValueError(f"dataset has no text field {text_field!r} and {exc}") from exc
        dataset = with_text(dataset, fmt, text_field)
    if id_field not in dataset.column_names:
        dataset = dataset.map(lambda b: {id_field: [content_id(t) for t in b[text_field]]},
                              batched=True)
    ctx = ctx or StepContext(text_field=text_field, id_field=id_field, show_progress=show_progress)
    ctx.text_field, ctx.id_field = text_field, id_field
    ctx.record_format = fmt
    ledger = ctx.ledger
    info = dict(input_info or {})
    info.setdefault("rows", len(dataset))
    info.setdefault("fingerprint", getattr(dataset, "_fingerprint", ""))
    manifest = Manifest(input=info, spec=spec_of(built), datadiet_version=__version__)

    origin = np.arange(len(dataset), dtype=np.int64)  # current row -> input row
    removed_batches: list[pa.Table] = []
    score_columns: list[str] = []
    current = dataset
    for step in built:
        before = ledger.total
        with ledger.stage(f"step:{step.name}") as rec:
            seconds_before = rec.seconds  # a repeated step name accumulates on one stage
            selection = step.select(current, ctx)
        if selection.n_rows != len(current):
            raise RuntimeError(f"step {step.name} returned {selection.n_rows} rows, saw {len(current)}")
        after = ledger.total
        removed_idx = selection.removed_indices
        if selection.scores is not None and not np.isnan(selection.scores).all():
            column = score_column(step.name, current.column_names)
            current = current.add_column(column, np.asarray(selection.scores, dtype=np.float64))
            score_columns.append(column)
        if len(removed_idx):
            ids = current.select(removed_idx)[id_field] if len(removed_idx) < len(current) else current[id_field]
            scores = (current.select_columns(score_columns).with_format("arrow")[:]
                      if score_columns else None)
            removed_batches.append(pa.table({
                "id": pa.array([str(i) for i in ids], pa.string()),
                "input_row": pa.array(origin[removed_idx]),
                "step": pa.array([step.name] * len(removed_idx), pa.string()),
                "reason": pa.array([selection.reason(int(i)) for i in removed_idx], pa.string()),
                **{c: scores.column(c).take(pa.array(removed_idx)) for c in score_columns},  # type: ignore[union-attr]
            }))
        kept = selection.kept_indices
        manifest.steps.append(StepReport(
            name=step.name,
            params=jsonable(step.params()),
            rows_in=selection.n_rows,
            rows_out=len(kept),
            removed=selection.removed_by_kind(),
            seconds=round(rec.seconds - seconds_before, 4),  # model loading is its own stage
            tokens_scored=after.tokens - before.tokens,
            flops=after.flops - before.flops,
            peak_memory_bytes=rec.peak_memory_bytes,
            stats=jsonable(selection.stats),
        ))
        origin = origin[kept]
        if len(kept) < len(current):
            current = current.select(kept).flatten_indices() if len(kept) else current.select([])
    manifest.output = {"rows": len(current)}
    manifest.ledger = ledger.to_dict()
    removed = (pa.concat_tables(removed_batches, promote_options="default") if removed_batches else
               pa.table({"id": pa.array([], pa.string()), "input_row": pa.array([], pa.int64()),
                         "step": pa.array([], pa.string()), "reason": pa.array([], pa.string())}))
    return CurateResult(current, manifest, removed)


def curate_path(
    source: str | os.PathLike,
    steps: Sequence[Step],
    out: str | os.PathLike,
    *,
    text_field: str = "text",
    id_field: str = "id",
    keep_fields: Sequence[str] = (),
    on_error: OnError = "raise",
    overwrite: bool = False,
    rows_per_shard: int = 100_000,
    show_progress: bool = True,
    ctx: StepContext | None = None,
    fields: RecordFormat | str | dict | None = "auto",
) -> CurateResult:
    """Read ``source``, curate, write ``out/`` (Parquet shards, manifest, removals) atomically.

    ``fields`` says how to read records (see :func:`~datadiet.pipeline.io.load_corpus`); for
    fine-tuning records the output keeps the input's columns, not the rendered text.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: output exists (pass --overwrite to replace it)")
    loaded: LoadedCorpus = load_corpus(source, text_field=text_field, id_field=id_field,
                                       keep_fields=keep_fields, on_error=on_error, fields=fields)
    fmt = loaded.record_format
    info = {
        "source": loaded.source,
        "fingerprint": loaded.fingerprint,
        "rows": len(loaded.dataset),
        "text_field": text_field,
        "id_field": id_field,
        "on_error": on_error,
        "skipped": loaded.skipped_summary(),
        "record_format": fmt.describe() if fmt else None,
    }
    ctx = ctx or StepContext(text_field=text_field, id_field=id_field, show_progress=show_progress)
    result = curate(loaded.dataset, steps, text_field=text_field, id_field=id_field, ctx=ctx,
                    input_info=info, fields=fmt)
    written = result.dataset
    if fmt is not None and not fmt.is_text:  # the text column is our rendering, not the input's
        written = written.remove_columns(text_field)
    with AtomicOutputDir(out, overwrite=overwrite) as tmp:
        shards = write_parquet_shards(written, tmp, rows_per_shard)
        (tmp / "removed").mkdir()
        pq.write_table(result.removed, tmp / "removed" / "removed.parquet")
        result.manifest.output = {
            "rows": len(result.dataset),
            "shards": shards,
            "removed_file": "removed/removed.parquet",
            "fingerprint": result.dataset._fingerprint,
        }
        atomic_write_text(tmp / "manifest.json", result.manifest.to_json())
    return result


def print_report(manifest: Manifest, stream: Any = None) -> None:
    print(manifest.summary_table(), file=stream or sys.stdout)
