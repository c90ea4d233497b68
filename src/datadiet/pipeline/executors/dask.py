"""The Dask executor: maps on the workers of a ``distributed`` cluster, reduces distributed.

The driver (this process) reads the corpus once with the one reader, keeping its scratch copy
for the one writer, and scatters the text column to the workers partition by partition while
it reads (``partition_rows`` rows each, round robin). Each step's map runs on the worker that
holds the partition, and its features stay there; Dask's worker memory manager spills them to
disk under a worker's ``memory_limit``. What comes back to the driver is small: per-row
decisions of row-local steps, the labels of duplicate rows, and the verified edges of MinHash.

Reduces, by the shape a step declares (see :mod:`datadiet.pipeline.executors`):

* row-local (quality): each partition decides its live rows on its worker (deferred steps map
  only the survivors there); the Selections are joined in row order, stats summed.
* :class:`~datadiet.pipeline.steps.DuplicateGroups` (exact dedup): each partition splits its
  live rows' keys by hash range into one piece per worker; worker ``r`` groups range ``r``
  (rows arrive in input order, so the first row of a group is the earliest) and returns the
  (row, first row) of each copy.
* :class:`~datadiet.pipeline.steps.NearDuplicates` (MinHash): each partition splits its live
  rows' (band, key, row) triplets by bucket owner (whole bands dealt round robin, or key ranges
  of a band when there are more workers than bands), so each worker owns a share of the
  buckets and emits their candidate pairs by the step's bucket rule, in one pass; the
  pairs go to the partition holding the pair's second row, which drops repeats (one pair,
  many bands) and attaches that row's signature; then to the partition holding the first row,
  which verifies the pair against its own signature and keeps a spanning forest of the verified
  pairs (one edge per duplicate row it saw). Only those forests reach the driver, where
  connected components run on the nodes their edges touch (union-find over an edge list about
  the size of the duplicates found, not of the corpus). Signatures never leave their partition's worker
  except one per candidate pair.

Every function a task runs is a pure function of its inputs, and the step's own functions
decide (its map, its bucket rule, its similarity, its components), so the kept rows, the
reasons and the stats equal the in-process run's.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from distributed import Client, Future, LocalCluster, wait

from datadiet.pipeline.executors.plan import Executor, Plan, PlannedStep
from datadiet.pipeline.io import StreamedCorpus, UserError, arrow_bools, stream_corpus
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.records import RecordFormat
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import (
    DuplicateGroups,
    NearDuplicates,
    RecordView,
    Step,
    StepContext,
)

Features = dict[str, np.ndarray]

#: Text bytes per partition, at most and at least (see :meth:`DaskExecutor.partition_bytes`).
MAX_PARTITION_BYTES = 64 << 20
MIN_PARTITION_BYTES = 1 << 20
#: Partitions per worker whose read-time maps may be pending while the driver reads on.
PARTITIONS_IN_FLIGHT = 2
#: Bounds of the (band, key, row) triplets one MinHash bucket owner takes (18 bytes each, and
#: its candidate pairs beside them): see :meth:`DaskExecutor.share_keys`.
SHARE_KEYS = (1 << 16, 1 << 21)


@dataclass
class Mapped:
    """A partition's features for one step (on a worker), and the seconds its map took."""

    features: Features
    seconds: float  #: the map's, model loading left out
    ledger: Ledger  #: the map's model work (tokens, FLOPs, loading), merged in the driver


@dataclass
class _Partition:
    start: int  #: first input row
    rows: int
    #: the columns the plan's maps read (the text, and a fine-tuning row's fields where a
    #: step reads them) on a worker; released when no map needs them
    text: Future | None


def _map(step: Step, batch: pa.RecordBatch, view: RecordView,
         mask: np.ndarray | None = None, combined: Any = None) -> Mapped:
    """A step's map over a partition's records (only the ``mask`` rows, when given;
    ``combined``: a global-pass step's combine result for this partition)."""
    start, ledger = time.perf_counter(), Ledger()
    if mask is not None:
        batch = batch.filter(arrow_bools(mask))
    view = view.booking_on(ledger)
    if combined is not None:
        view = view.with_combined(combined)
    features = step.record_features(batch, view)
    return Mapped(features, time.perf_counter() - start - ledger.loading_seconds(), ledger)


def _summarize(step: Step, batch: pa.RecordBatch, view: RecordView,
               mask: np.ndarray) -> tuple[Any, Ledger | None]:
    """The first pass of a global-pass step over a partition's live rows: its summary (and
    the pass's ledger, when it booked anything)."""
    two_pass = step.global_pass()
    assert two_pass is not None
    ledger = Ledger()
    summary = two_pass.summarize(batch.filter(arrow_bools(mask)), view.booking_on(ledger))
    return summary, ledger if ledger.stages else None


def _ledger(mapped: Mapped) -> Ledger | None:
    """A map's ledger, when it booked anything (a model step's)."""
    return mapped.ledger if mapped.ledger.stages else None


def _live(mapped: Mapped, mask: np.ndarray | None) -> Features:
    """The features of the live rows (``mask`` of a read-time map; ``None``: all of them)."""
    if mask is None or mask.all():
        return mapped.features
    return {name: array[mask] for name, array in mapped.features.items()}


def _piece(parts: tuple, index: int) -> Any:
    """One destination's piece of a split (a task, so pieces move worker to worker)."""
    return parts[0][index]


def _seconds(parts: tuple) -> float:
    return parts[1]


# -- row-local and gathered reduces ---------------------------------------------------------


def _decide(step: Step, mapped: Mapped, mask: np.ndarray | None, ids: pa.Array, view: RecordView,
            id_field: str) -> tuple[Selection, float]:
    """A row-local step's decision on one partition's live rows."""
    ctx = StepContext(text_field=view.text_field, id_field=id_field, show_progress=False,
                      record_format=view.record_format)
    selection = step.select_from_features(pa.table({id_field: ids}), ctx, _live(mapped, mask))
    return selection, mapped.seconds


def _take(mapped: Mapped, mask: np.ndarray | None) -> tuple[Features, float]:
    return _live(mapped, mask), mapped.seconds


def _join_selections(parts: list[Selection]) -> Selection:
    """Row-local Selections of consecutive partitions as one (stats: numbers add up)."""
    n = sum(p.n_rows for p in parts)
    detail = None
    if any(p.reason_detail is not None for p in parts):
        detail = np.concatenate([p.reason_detail if p.reason_detail is not None
                                 else np.full(p.n_rows, "", object) for p in parts])
    scores = None
    if any(p.scores is not None for p in parts):
        scores = np.concatenate([p.scores if p.scores is not None else np.full(p.n_rows, np.nan)
                                 for p in parts])
    stats: dict = {}
    for part in parts:
        stats = _add_stats(stats, part.stats)
    if not parts:
        return Selection.keep_all(0)
    return Selection(n, np.concatenate([p.keep for p in parts]),
                     np.concatenate([p.reason_kind for p in parts]), detail, scores, stats)


def _add_stats(total: Any, more: Any) -> Any:
    """Stats of two partitions: numbers add, mappings merge key by key, equal values stay."""
    if isinstance(total, dict) and isinstance(more, dict):
        return {k: _add_stats(total[k], more[k]) if k in total and k in more
                else total.get(k, more.get(k)) for k in {**total, **more}}
    if isinstance(total, int | float) and isinstance(more, int | float) \
            and not isinstance(total, bool):
        return total + more
    return more if total == more else total


# -- exact groups: hash-partitioned ---------------------------------------------------------


def _owner(keys: np.ndarray, owners: int) -> np.ndarray:
    """Which of ``owners`` workers owns each 64-bit key: a range of a mixed copy of the key."""
    mixed = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(32)) * np.uint64(owners) >> np.uint64(32)).astype(np.int64)


def _split_by(owner: np.ndarray, owners: int, *arrays: np.ndarray) -> list[tuple]:
    """``arrays`` cut into one piece per owner, each keeping the rows' order."""
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(owners + 1))
    return [tuple(a[order[bounds[r] : bounds[r + 1]]] for a in arrays) for r in range(owners)]


def _split_keys(mapped: Mapped, mask: np.ndarray | None, base: int, key: str,
                owners: int) -> tuple[list[tuple], float]:
    """A partition's (key, live row) pairs, one piece per key range."""
    keys = _live(mapped, mask)[key]
    keys = keys.reshape(len(keys), -1)
    pos = base + np.arange(len(keys), dtype=np.int64)
    return _split_by(_owner(keys[:, 0], owners), owners, keys, pos), mapped.seconds


def _group(shape: DuplicateGroups, *pieces: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One key range's groups (pieces in partition order, so rows are in input order):
    ``(row, first row of its group)`` of every row that is not first."""
    keys = np.concatenate([p[0] for p in pieces])
    pos = np.concatenate([p[1] for p in pieces])
    if len(pos) == 0:
        return pos, pos
    first = pos[shape.first_of_group(keys)]
    copies = first != pos
    return pos[copies], first[copies]


# -- near duplicates: buckets shuffled, pairs verified where the signatures are -------------


def _split_bands(mapped: Mapped, mask: np.ndarray | None, base: int, shape: NearDuplicates,
                 owners: int) -> tuple[list[tuple], float]:
    """A partition's (band, key, live row) of every clusterable row, one piece per owner of
    the bucket (see :func:`_bucket_owner`). Rows stay in input order within a band."""
    live = _live(mapped, mask)
    valid = np.flatnonzero(np.asarray(live[shape.valid], bool))
    keys = np.asarray(live[shape.band_keys])[valid]
    bands = keys.shape[1]
    flat = keys.ravel()
    band = np.tile(np.arange(bands, dtype=np.int16), len(valid))
    pos = np.repeat(base + valid.astype(np.int64), bands)
    return (_split_by(_bucket_owner(band, flat, bands, owners), owners, band, flat, pos),
            mapped.seconds)


def _bucket_owner(band: np.ndarray, keys: np.ndarray, bands: int, owners: int) -> np.ndarray:
    """Which worker owns each bucket: whole bands, dealt round robin, while there are at least
    as many bands as workers (so an owner sees every row of its bands and groups them in one
    pass); with more workers than bands, each band's keys split by hash range over
    ``owners // bands`` workers."""
    if owners <= bands:
        return band.astype(np.int64) % owners
    share = owners // bands
    return band.astype(np.int64) * share + _owner(keys, share)


def _bucket_pairs(shape: NearDuplicates, bounds: np.ndarray,
                  *pieces: tuple) -> list[np.ndarray]:
    """The distinct candidate pairs of the buckets this worker owns, as ``(m, 2)`` live rows,
    one piece per partition holding the pair's second row.

    The owner's bands, each holding the same rows (whole bands), or its one band's key range,
    form one ``(rows, bands)`` key matrix: the step's bucket rule then runs once over it,
    dropping the pairs that several bands repeat as it goes."""
    band = np.concatenate([p[0] for p in pieces])
    keys = np.concatenate([p[1] for p in pieces])
    pos = np.concatenate([p[2] for p in pieces])
    owned = np.unique(band)
    if len(pos) == 0:
        pairs = np.empty((0, 2), np.int64)
    else:
        first = band == owned[0]
        rows = pos[first]  # ascending: pieces came in partition order, rows in order within
        matrix = np.empty((len(rows), len(owned)), np.uint64)
        for column, b in enumerate(owned.tolist()):
            here = band == b
            if not np.array_equal(pos[here], rows):
                raise RuntimeError("a bucket owner's bands hold different rows")
            matrix[:, column] = keys[here]
        del band, keys, pos
        pairs = rows[shape.bucket_pairs(matrix)]
    owner = np.searchsorted(bounds, pairs[:, 1], side="right") - 1
    return [piece[0] for piece in _split_by(owner, len(bounds) - 1, pairs)]


def _unique_pairs(parts: list[np.ndarray], n: int) -> np.ndarray:
    """Distinct ``(i, j)`` rows of ``parts`` (``i < j < n``), sorted: as one int64 code each,
    sorted, repeats dropped (far cheaper than ``np.unique(axis=0)``)."""
    if not parts:
        return np.empty((0, 2), np.int64)
    code = np.concatenate([p[:, 0].astype(np.int64) * n + p[:, 1] for p in parts])
    code.sort()
    first = np.empty(len(code), bool)
    first[:1] = True
    np.not_equal(code[1:], code[:-1], out=first[1:])
    code = code[first]
    return np.stack([code // n, code % n], axis=1) if len(code) else np.empty((0, 2), np.int64)


def _live_rows(mask: np.ndarray | None, rows: int) -> np.ndarray:
    """The partition rows of its live rows, in order."""
    return np.arange(rows) if mask is None else np.flatnonzero(mask)


def _attach(mapped: Mapped, mask: np.ndarray | None, base: int, shape: NearDuplicates,
            bounds: np.ndarray, *pieces: np.ndarray) -> tuple[list[tuple], int]:
    """At the owner of the pairs' second rows: the distinct pairs (their count is the step's
    candidate pairs), one piece per owner of the first row, each with the signatures of the
    second rows it names (once per row, however many pairs name it). Without verification
    the pairs are the edges and carry no signature."""
    pairs = _unique_pairs([p for p in pieces if len(p)], int(bounds[-1]))
    owner = np.searchsorted(bounds, pairs[:, 0], side="right") - 1
    split = _split_by(owner, len(bounds) - 1, pairs)
    if shape.threshold is None:
        return split, len(pairs)
    signatures = mapped.features[shape.signatures]
    live = _live_rows(mask, len(signatures))
    out = []
    for (piece,) in split:
        named = np.unique(piece[:, 1])
        out.append((piece, named, np.asarray(signatures[live[named - base]])))
    return out, len(pairs)


def _verify(mapped: Mapped, mask: np.ndarray | None, base: int, shape: NearDuplicates,
            *pieces: tuple) -> tuple[np.ndarray, int]:
    """At the owner of the pairs' first rows: the pairs whose signatures agree enough, as a
    spanning forest of them (see :func:`_forest`), and how many they were."""
    pairs = np.concatenate([p[0] for p in pieces]) if pieces else np.empty((0, 2), np.int64)
    if shape.threshold is not None and len(pairs):
        pairs = _similar(mapped, mask, base, shape, pairs, pieces)
    return _forest(pairs, shape.components), len(pairs)


def _forest(edges: np.ndarray, components: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Edges with the same connected components as ``edges``, one per node that is not its
    component's smallest: ``(node, smallest node)``. Near copies come in clusters with many
    pairs each (T0's templates: ten verified pairs a row), so what the driver joins is about
    one edge per duplicate row, not one per pair."""
    nodes, labels = _node_labels(edges, components)
    joined = labels != nodes
    return np.stack([nodes[joined], labels[joined]], axis=1)


def _node_labels(edges: np.ndarray, components: Callable[[int, np.ndarray], np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The nodes ``edges`` touch and each one's label (its component's smallest node): the
    step's union-find on those nodes alone, so its size is the edges', not the corpus's."""
    nodes, local = np.unique(np.asarray(edges, np.int64).reshape(-1, 2), return_inverse=True)
    return nodes, nodes[components(len(nodes), local.reshape(-1, 2))]


def _similar(mapped: Mapped, mask: np.ndarray | None, base: int, shape: NearDuplicates,
             pairs: np.ndarray, pieces: tuple) -> np.ndarray:
    """The pairs whose signatures (ours, and theirs that came with the pieces) agree enough."""
    named = np.concatenate([p[1] for p in pieces])  # distinct rows: each has one owner
    theirs = np.concatenate([p[2] for p in pieces])
    order = np.argsort(named)
    named, theirs = named[order], theirs[order]
    signatures = mapped.features[shape.signatures]
    firsts, first_index = np.unique(pairs[:, 0], return_inverse=True)
    ours = np.asarray(signatures[_live_rows(mask, len(signatures))[firsts - base]])
    side_by_side = np.stack([first_index, len(firsts) + np.searchsorted(named, pairs[:, 1])],
                            axis=1)
    similar = shape.similarity(np.concatenate([ours, theirs]), side_by_side) >= shape.threshold
    return pairs[similar]


def _labels_from_edges(n: int, edges: np.ndarray,
                       components: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each live row's label (the smallest row of its component), from the workers' forests."""
    labels = np.arange(n, dtype=np.int64)
    nodes, node_labels = _node_labels(edges, components)
    labels[nodes] = node_labels
    return labels


def _peak_rss_mib() -> float:
    """This process's peak resident memory (a worker's, when run there)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the executor ---------------------------------------------------------------------------


class DaskExecutor(Executor):
    """Runs a plan on a ``distributed`` cluster (see the module docstring).

    Give a ``client``, or an ``address`` of a scheduler, or neither: then a ``LocalCluster`` of
    ``workers`` processes (one thread each, ``memory_limit`` each, on 127.0.0.1) is started
    and closed with the executor. Use it as a context manager (or call :meth:`shutdown`).
    Workers started elsewhere must import ``datadiet``; the driver alone reads and writes
    files, so they need no shared file system.
    """

    def __init__(self, client: Client | None = None, *, address: str | None = None,
                 workers: int = 2, memory_limit: str | int | None = "auto",
                 partition_rows: int = 65_536) -> None:
        if partition_rows < 1:
            raise ValueError(f"partition_rows must be at least 1, not {partition_rows}")
        self._client = client
        self.owns_client = client is None
        self.address = address
        self.workers = workers
        self.memory_limit = memory_limit
        self.cluster: LocalCluster | None = None
        self.partition_rows = partition_rows
        self.partitions: list[_Partition] = []
        self.mapped: dict[int, list[Future]] = {}
        self.deferred_left = 0
        self.plan: Plan | None = None

    @property
    def client(self) -> Client:
        """The cluster's client, connected (and a local cluster started) on first use, so that
        a run refused before reading (a spec this executor cannot run) starts nothing."""
        if self._client is None:
            address = self.address
            if address is None:
                self.cluster = LocalCluster(
                    n_workers=self.workers, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address=None, memory_limit=self.memory_limit,
                    silence_logs=logging.ERROR)
                address = self.cluster.scheduler_address
            try:
                self._client = Client(address, timeout="20s")
            except OSError as exc:  # no scheduler there: the user's to fix
                raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        return self._client

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Release the run's data; close the client and the cluster this executor started."""
        self.close()
        if self.owns_client and self._client is not None:
            self._client.close()
            self._client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def worker_peak_mib(self) -> dict[str, float]:
        """Each worker process's peak resident memory so far, in MiB."""
        return self.client.run(_peak_rss_mib)

    @property
    def owners(self) -> list[str]:
        """The workers, each owning a share of the keys of a distributed reduce."""
        return sorted(self.client.scheduler_info()["workers"])

    def worker_memory(self) -> int:
        """The smallest worker's memory limit in bytes (0: none set)."""
        limits = [w.get("memory_limit") or 0
                  for w in self.client.scheduler_info()["workers"].values()]
        return min((limit for limit in limits if limit), default=0)

    def partition_bytes(self) -> int:
        """Text bytes per partition: a sixteenth of the smallest worker's memory limit (at most
        :data:`MAX_PARTITION_BYTES`), so a map's working memory (shingles, hashes: a few times
        its text) fits beside what the worker holds. Scattered texts cannot be recomputed: a
        worker its nanny kills for memory loses them and the run with them."""
        memory = self.worker_memory()
        if not memory:
            return MAX_PARTITION_BYTES
        return max(MIN_PARTITION_BYTES, min(MAX_PARTITION_BYTES, memory // 16))

    def share_keys(self) -> int:
        """(band, key, row) triplets one MinHash bucket owner takes at most: one per KiB of
        the smallest worker's memory limit, within :data:`SHARE_KEYS` bounds. A bucket owner's
        candidate pairs are built in one pass, and near-copy clusters (templated rows) give
        many pairs per key: about 150 bytes a key were measured at the peak on T0."""
        memory = self.worker_memory()
        low, high = SHARE_KEYS
        return high if not memory else max(low, min(high, memory // 1024))

    def read(self, source: str | os.PathLike, plan: Plan, work: Path, options: dict[str, Any],
             ctx: StepContext) -> StreamedCorpus:
        """Read on the driver; scatter each partition's texts and map it on its worker.

        At most :data:`PARTITIONS_IN_FLIGHT` partitions per worker wait for their maps: the
        driver reads faster than the workers map, and without this bound every worker would
        hold the whole read's texts at once."""
        self.close()
        self.plan = plan
        workers = self.owners
        text_field = options["text_field"]
        read_maps = plan.read_maps
        columns: list[str] = []
        self.deferred_left = len(plan.steps) - len(read_maps)
        self.mapped = {p.index: [] for p in read_maps}
        pending: list[pa.RecordBatch] = []
        rows = text_bytes = 0
        max_bytes = self.partition_bytes()
        in_flight: list[Future] = []

        def flush() -> None:
            nonlocal pending, rows, text_bytes, in_flight
            # Fresh arrays: a reader batch may be a slice of a bigger buffer, which pickling
            # would send whole.
            records = pa.RecordBatch.from_arrays(
                [pa.concat_arrays([b.column(c) for b in pending]) for c in columns], columns)
            worker = workers[len(self.partitions) % len(workers)]
            [future] = self.client.scatter([records], workers=[worker], hash=False)
            start = self.partitions[-1].start + self.partitions[-1].rows if self.partitions else 0
            self.partitions.append(_Partition(start, rows, future))
            for planned in read_maps:
                self.mapped[planned.index].append(
                    self.client.submit(_map, planned.step, future, plan.view, pure=False))
            in_flight = [f for f in in_flight if not f.done()]
            in_flight += [self.mapped[p.index][-1] for p in read_maps]
            while len(in_flight) > PARTITIONS_IN_FLIGHT * len(workers) * max(1, len(read_maps)):
                wait(in_flight, return_when="FIRST_COMPLETED")
                in_flight = [f for f in in_flight if not f.done()]
            pending, rows, text_bytes = [], 0, 0

        with ctx.progress(None, "read + scatter to Dask workers") as bar:

            def on_batch(batch: pa.RecordBatch) -> None:
                nonlocal rows, text_bytes
                pending.append(batch)
                rows += batch.num_rows
                text_bytes += sum(batch.column(c).nbytes for c in columns)  # what ships
                if rows >= self.partition_rows or text_bytes >= max_bytes:
                    flush()
                bar.update(batch.num_rows)

            def on_start(names: list[str], fmt: RecordFormat | None) -> None:
                plan.begin(names, fmt, ctx)
                # the maps' columns, the text always (a partition's rows are counted by it)
                wanted = set(plan.map_columns(plan.steps, names)) | {text_field}
                columns.extend(c for c in names if c in wanted)

            corpus = stream_corpus(source, on_batch, work, on_start=on_start, **options)
            if rows:
                flush()
        plan.begin(corpus.schema.names, corpus.record_format, ctx)  # no batch at all
        if not self.deferred_left:
            self._release_texts()
        return corpus

    def _release_texts(self) -> None:
        for part in self.partitions:
            part.text = None

    def reduce(self, planned: PlannedStep, alive: np.ndarray, names: Any,
               ctx: StepContext) -> tuple[Selection, float]:
        """The step's reduce, distributed by its shape; its read-time maps' seconds (summed
        over workers) come back with the first stage that reads its features."""
        step = planned.step
        view = self.plan.view if self.plan is not None else None
        assert view is not None
        if not self.partitions:  # an empty corpus
            return step.select_from_features(names, ctx, step.empty_features(view)), 0.0
        keep = np.zeros(self.partitions[-1].start + self.partitions[-1].rows, bool)
        keep[alive] = True
        masks = [keep[p.start : p.start + p.rows] for p in self.partitions]
        bounds = np.searchsorted(alive, [p.start for p in self.partitions] + [len(keep)])
        if planned.maps_during_read:
            mapped = self.mapped.pop(planned.index)
            masks_given: list[np.ndarray | None] = [None if m.all() else m for m in masks]
        else:
            combined = self._global_pass(step, masks, view, ctx)
            mapped = [self.client.submit(_map, step, p.text, view, m, c, pure=False)
                      for p, m, c in zip(self.partitions, masks, combined, strict=True)]
            masks_given = [None] * len(masks)
            self.deferred_left -= 1
            if not self.deferred_left:
                self._release_texts()
        shape = step.distributed_reduce()
        if step.row_local:
            selection, seconds = self._row_local(step, mapped, masks_given, bounds, names, ctx,
                                                 view)
        elif isinstance(shape, DuplicateGroups):
            selection, seconds = self._groups(step, shape, mapped, masks_given, bounds, names,
                                              ctx)
        elif isinstance(shape, NearDuplicates):
            selection, seconds = self._near(step, shape, mapped, masks_given, bounds, names, ctx)
        else:
            selection, seconds = self._gathered(step, mapped, masks_given, names, ctx, view)
        for ledger in self.client.gather([self.client.submit(_ledger, m, pure=False)
                                          for m in mapped]):
            if ledger is not None:
                ctx.ledger.absorb(ledger)
        # A deferred map ran inside the step's ledger stage, which timed it already.
        return selection, seconds if planned.maps_during_read else 0.0

    def _global_pass(self, step: Step, masks: list[np.ndarray], view: RecordView,
                     ctx: StepContext) -> list[Any]:
        """A global-pass step's first pass on the workers, its combine here: one result per
        partition (``None`` for every partition of any other step). The summaries come back
        to the driver (they are small by contract); each result goes to its partition's map
        once (scattered, and sent once when the combine gives several partitions the same
        object, as DSIR's one log-ratio vector)."""
        two_pass = step.global_pass()
        if two_pass is None:
            return [None] * len(masks)
        results = self.client.gather([
            self.client.submit(_summarize, step, p.text, view, m, pure=False)
            for p, m in zip(self.partitions, masks, strict=True)])
        for _, ledger in results:
            if ledger is not None:
                ctx.ledger.absorb(ledger)
        combined = two_pass.combine([summary for summary, _ in results])
        if len(combined) != len(masks):
            raise RuntimeError(f"step {step.name}: its combine gave {len(combined)} results "
                               f"for {len(masks)} pieces")
        scattered: dict[int, Future] = {}
        for value in combined:
            if id(value) not in scattered:
                [scattered[id(value)]] = self.client.scatter([value], hash=False)
        return [scattered[id(value)] for value in combined]

    def _row_local(self, step: Step, mapped: list[Future], masks: list, bounds: np.ndarray,
                   names: pa.Table, ctx: StepContext,
                   view: RecordView) -> tuple[Selection, float]:
        ids = names.column(ctx.id_field)
        futures = [self.client.submit(_decide, step, m, mask,
                                      ids.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])),
                                      view, ctx.id_field, pure=False)
                   for k, (m, mask) in enumerate(zip(mapped, masks, strict=True))]
        results = self.client.gather(futures)
        return _join_selections([r[0] for r in results]), sum(r[1] for r in results)

    def _gathered(self, step: Step, mapped: list[Future], masks: list, names: pa.Table,
                  ctx: StepContext, view: RecordView) -> tuple[Selection, float]:
        """A reduce without a distributed shape: the live rows' features in this process."""
        results = self.client.gather([self.client.submit(_take, m, mask, pure=False)
                                      for m, mask in zip(mapped, masks, strict=True)])
        if not results:
            return step.select_from_features(names, ctx, step.empty_features(view)), 0.0
        # a partition with no live row may give a model's map no width (no model loaded)
        features = {name: np.concatenate([r[0][name] for r in results if len(r[0][name])]
                                         or [results[0][0][name]]) for name in results[0][0]}
        return step.select_from_features(names, ctx, features), sum(r[1] for r in results)

    def _shuffle(self, splits: list[Future], reduce: Callable, *args: Any,
                 shares: int | None = None) -> list[Future]:
        """Piece ``r`` of every split to task ``r``: the all-to-all exchange. There is one
        task per worker, or ``shares`` tasks dealt over the workers round robin (smaller
        tasks, when one worker's share would not fit its memory)."""
        owners = self.owners
        return [self.client.submit(
            reduce, *args, *[self.client.submit(_piece, s, r, pure=False) for s in splits],
            workers=[owners[r % len(owners)]], allow_other_workers=True, pure=False)
            for r in range(shares or len(owners))]

    def _groups(self, step: Step, shape: DuplicateGroups, mapped: list[Future], masks: list,
                bounds: np.ndarray, names: pa.Table, ctx: StepContext) -> tuple[Selection, float]:
        owners = len(self.owners)
        splits = [self.client.submit(_split_keys, m, mask, int(bounds[k]), shape.key, owners,
                                     pure=False)
                  for k, (m, mask) in enumerate(zip(mapped, masks, strict=True))]
        copies = self.client.gather(self._shuffle(splits, _group, shape))
        seconds = sum(self.client.gather([self.client.submit(_seconds, s) for s in splits]))
        labels = np.arange(len(names), dtype=np.int64)
        for rows, first in copies:
            labels[rows] = first
        return step.select_from_labels(names, ctx, labels, {}), seconds

    def _near(self, step: Step, shape: NearDuplicates, mapped: list[Future], masks: list,
              bounds: np.ndarray, names: pa.Table, ctx: StepContext) -> tuple[Selection, float]:
        bands = self.client.submit(_columns, mapped[0], shape.band_keys, pure=False).result()
        owners = _bucket_shares(len(names), bands, len(self.owners), self.share_keys())
        parts = range(len(mapped))
        splits = [self.client.submit(_split_bands, mapped[k], masks[k], int(bounds[k]), shape,
                                     owners, pure=False) for k in parts]
        buckets = self._shuffle(splits, _bucket_pairs, shape, bounds, shares=owners)
        attached = [self.client.submit(
            _attach, mapped[k], masks[k], int(bounds[k]), shape, bounds,
            *[self.client.submit(_piece_of_list, b, k, pure=False) for b in buckets],
            pure=False) for k in parts]
        verified = [self.client.submit(
            _verify, mapped[k], masks[k], int(bounds[k]), shape,
            *[self.client.submit(_piece, a, k, pure=False) for a in attached], pure=False)
            for k in parts]
        forests = self.client.gather(verified)
        candidates = sum(self.client.gather([self.client.submit(_count, a) for a in attached]))
        seconds = sum(self.client.gather([self.client.submit(_seconds, s) for s in splits]))
        edge_list = np.concatenate([f[0] for f in forests]) if forests \
            else np.empty((0, 2), np.int64)
        labels = _labels_from_edges(len(names), edge_list, shape.components)
        stats = {"candidate_pairs": candidates, "merged_pairs": sum(f[1] for f in forests)}
        return step.select_from_labels(names, ctx, labels, stats), seconds

    def close(self) -> None:
        """Drop the run's futures: the workers free the partitions and features."""
        self.mapped = {}
        self.partitions = []


def _columns(mapped: Mapped, name: str) -> int:
    """Columns of a feature (a MinHash step's bands)."""
    return int(mapped.features[name].shape[1])


def _bucket_shares(rows: int, bands: int, workers: int, share_keys: int) -> int:
    """Bucket owners of a MinHash reduce: one per worker, or more when a worker's share of the
    (band, key, row) triplets would pass ``share_keys``: then each band's keys are split by
    hash range over several shares, dealt over the workers (a share's pairs are built in one
    pass, so its size bounds the task's working memory, whatever the corpus's size)."""
    if rows * bands <= share_keys * workers:
        return workers
    per_band = -(-rows // share_keys)  # key ranges per band
    return max(workers, bands * per_band)


def _piece_of_list(pieces: list, index: int) -> Any:
    return pieces[index]


def _count(parts: tuple) -> int:
    return parts[1]


__all__ = ["DaskExecutor", "Mapped"]
