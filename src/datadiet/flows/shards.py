"""The per-shard half of the sharded ``curate`` flow: the tasks Dask workers run.

Kept apart from :mod:`datadiet.flows.curation` so that a worker, which imports the module of each
task it runs, loads Prefect, Arrow and the selectors but not torch (the report's FLOPs need the
model presets; shard work never does) — seconds saved on every worker start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset
from datasets.table import InMemoryTable

from datadiet.flows.common import cached_task, task_run_namer
from datadiet.pipeline.io import load_corpus
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import Step, StepContext, build_step


class PrecomputedStep(Step):
    """A row-local step whose decisions were made shard by shard; it answers by row id.

    It reports the wrapped step's name and parameters, so the manifest reads as if the step had
    run in place.
    """

    name = "precomputed"

    def __init__(self, inner: Step, decisions: dict[str, tuple[str, str]]) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc] - the manifest shows the real step
        self.decisions = decisions

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        ids = [str(i) for i in ds[ctx.id_field]]
        found = [self.decisions.get(i) for i in ids]
        keep = np.array([f is None for f in found], dtype=bool)
        kinds = np.array([f[0] if f else "" for f in found], dtype=object)
        detail = np.array([f[1] if f else "" for f in found], dtype=object)
        return Selection.from_mask(keep, kinds, detail, stats={"decided_on_shards": True})


class PrecomputedFeatures(Step):
    """A map/reduce step whose per-row features were computed shard by shard; its reduce runs
    here, on the rows still alive, from their rows of those features.

    ``row_of`` maps every input id to its input row (the features' row order).
    """

    name = "precomputed-features"

    def __init__(self, inner: Step, features: dict[str, np.ndarray],
                 row_of: dict[str, int]) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc] - the manifest shows the real step
        self.features = features
        self.row_of = row_of

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        rows = np.fromiter((self.row_of[str(i)] for i in ds[ctx.id_field]), np.int64, len(ds))
        alive = {name: array[rows] for name, array in self.features.items()}
        return self.inner.select_from_features(ds, ctx, alive)


def read_features(paths: list[str]) -> dict[str, np.ndarray]:
    """Every shard's feature arrays, concatenated in row order."""
    parts = [dict(np.load(path)) for path in paths]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def input_rows(shard_paths: list[str], id_field: str) -> dict[str, int]:
    """Input row of every id, from the shards (contiguous, in order)."""
    ids = [i for path in shard_paths for i in pq.read_table(path, columns=[id_field])
           .column(id_field).to_pylist()]
    return {str(i): row for row, i in enumerate(ids)}


def read_decisions(paths: list[str]) -> dict[str, tuple[str, str]]:
    decisions: dict[str, tuple[str, str]] = {}
    for path in paths:
        table = pq.read_table(path).to_pydict()
        decisions.update(zip(table["id"], zip(table["kind"], table["detail"], strict=True),
                             strict=True))
    return decisions


@cached_task(task_run_name=task_run_namer("split {source} into {n_shards} shards"))
def write_shards(source: str, fingerprint: str, text_field: str, id_field: str, on_error: str,
                 n_shards: int, folder: str) -> list[str]:
    """Read the corpus once and write it as ``n_shards`` contiguous Parquet shards (id, text)."""
    loaded = load_corpus(source, text_field=text_field, id_field=id_field, on_error=on_error)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_shards):
        shard = loaded.dataset.shard(n_shards, index, contiguous=True)
        path = root / f"shard-{index:05d}-of-{n_shards:05d}.parquet"
        shard.select_columns([id_field, text_field]).to_parquet(str(path))
        paths.append(str(path))
    return paths


@cached_task(task_run_name=task_run_namer("{step_name} on {shard_path}"))
def decide_shard(step_name: str, step_params: dict, shard_path: str, fingerprint: str,
                 text_field: str, id_field: str, out_path: str) -> dict:
    """Run one row-local step on one shard; write the removed rows' ids and reasons."""
    step = build_step(step_name, step_params)
    shard = Dataset(InMemoryTable(pq.read_table(shard_path)))
    ctx = StepContext(text_field=text_field, id_field=id_field, show_progress=False)
    selection = step.select(shard, ctx)
    removed = selection.removed_indices
    ids = np.asarray(shard[id_field], dtype=object)[removed]
    kinds = selection.reason_kind[removed]
    details = (selection.reason_detail[removed] if selection.reason_detail is not None
               else np.full(len(removed), "", dtype=object))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array([str(i) for i in ids], pa.string()),
                             "kind": pa.array([str(k) for k in kinds], pa.string()),
                             "detail": pa.array([str(d) for d in details], pa.string())}),
                   out_path)
    return {"path": out_path, "rows": len(shard), "removed": len(removed)}


@cached_task(task_run_name=task_run_namer("{step_name} features of {shard_path}"))
def shard_features(step_name: str, step_params: dict, shard_path: str, fingerprint: str,
                   text_field: str, out_path: str) -> dict:
    """The map half of one map/reduce step on one shard: its per-row arrays, saved as .npz."""
    step = build_step(step_name, step_params)
    texts = pq.read_table(shard_path, columns=[text_field]).column(text_field).combine_chunks()
    features = step.row_features(texts)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as handle:  # np.savez on a path would append ".npz" to a temp name
        np.savez(handle, **features)
    return {"path": out_path, "rows": len(texts)}


__all__ = ["PrecomputedFeatures", "PrecomputedStep", "decide_shard", "input_rows",
           "read_decisions", "read_features", "shard_features", "write_shards"]
