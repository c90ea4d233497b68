"""The in-process executor: maps on a second thread while the reader parses, reduces here.

Memory: a few batches plus the features; features past :data:`SPILL_BYTES` are written to
scratch files and memory-mapped back (the page cache keeps what fits).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from datadiet.pipeline.executors.plan import Executor, Plan, PlannedStep
from datadiet.pipeline.io import StreamedCorpus, arrow_bools, stream_corpus
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.records import RecordFormat
from datadiet.pipeline.selection import Selection
from datadiet.pipeline.steps import GlobalPass, Step, StepContext

#: A step's per-row features past this many bytes go to scratch files as they are computed,
#: and the arrays its reduce reads are memory-mapped there (the page cache keeps what fits):
#: MinHash signatures are 512 bytes a row, 5 GB for ten million rows.
SPILL_BYTES = 256 << 20

#: Rows per map call of a deferred step: the reader's batches (about 1 MB of text) thinned by
#: the steps before are gathered up to this, so a compiled map runs on batches big enough to
#: keep its threads busy (the quality kernel took twice as long on ~900-row batches).
SURVIVOR_BATCH = 8192


class SpillFile:
    """One feature's spilled rows: one append-only file per feature, read back in order.

    Why one file and not one per batch: a reader batch is about 1 MB of text, so a 5M-document
    corpus makes thousands of batches, and a memory map per batch and feature holds a file
    descriptor each (Python's ``mmap`` keeps its own): past the process's limit the run died
    with "Too many open files". Appending raw rows to one file keeps a single descriptor per
    feature while writing and while reading.
    """

    def __init__(self, path: Path, like: np.ndarray) -> None:
        self.path = path
        self.dtype = like.dtype
        self.row_shape = like.shape[1:]
        self.rows = 0
        self.file: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed by read_back()

    def append(self, array: np.ndarray) -> None:
        assert self.file is not None, "append after the spill file was read"
        np.ascontiguousarray(array, dtype=self.dtype).tofile(self.file)
        self.rows += len(array)

    def read_back(self) -> Generator[np.ndarray, int | None, None]:
        """Yields the rows written, in order, ``rows`` at a time for each ``send(rows)``.

        Read with plain file reads, not a memory map: the reduce copies the live rows into its
        own arrays part by part, and pages of a mapped file stay in the process's resident set
        until it is unmapped (at 1M documents the spilled signatures added ~500 MiB to the peak
        RSS), while pages read through the page cache are the kernel's to drop.
        """
        if self.file is not None:
            self.file.close()
            self.file = None
        row_items = int(np.prod(self.row_shape, dtype=np.int64))
        with open(self.path, "rb") as handle:
            rows = yield np.empty((0, *self.row_shape), self.dtype)
            while rows is not None:
                data = np.fromfile(handle, self.dtype, count=rows * row_items)
                rows = yield data.reshape(rows, *self.row_shape)


class FeatureMap:
    """One map/reduce step's per-row features, computed batch by batch as the corpus is read,
    and its seconds, booked on the step.

    Parts stay in memory until the step's features pass :data:`SPILL_BYTES`; later parts go to
    one :class:`SpillFile` per feature (a part is then just its row count)."""

    def __init__(self, step: Step, index: int, ctx: StepContext, plan: Plan) -> None:
        self.step = step
        self.plan = plan  # its view (how to read records) is set before the first batch
        self.index = index  # the step's place in the spec (names of its scratch files)
        self.ctx = ctx
        self.parts: list[dict[str, np.ndarray] | int] = []
        self.part_rows: list[int] = []  # rows of each part (a map may give no array at all)
        self.spill: dict[str, SpillFile] = {}
        self.bytes = 0
        self.seconds = 0.0  # booked on the step's ledger stage by the runner, after the read
        self.ledger = Ledger()  # the maps' model work (this thread's), merged at the reduce

    def add(self, batch: pa.RecordBatch | pa.Table, combined: Any = None) -> None:
        """Map one batch (``combined``: a :class:`~datadiet.pipeline.steps.GlobalPass`
        step's result for it)."""
        start, loading = time.perf_counter(), self.ledger.loading_seconds()
        assert self.plan.view is not None
        view = self.plan.view.booking_on(self.ledger)
        if combined is not None:
            view = view.with_combined(combined)
        part = self.step.record_features(batch, view)
        self.bytes += sum(array.nbytes for array in part.values())
        self.parts.append(self._spill(part, batch.num_rows) if self.bytes > SPILL_BYTES
                          else part)
        self.part_rows.append(batch.num_rows)
        # loading a model is booked on its own stage, not on the step's maps
        self.seconds += time.perf_counter() - start - (self.ledger.loading_seconds() - loading)

    def summarize(self, two_pass: GlobalPass, batch: pa.RecordBatch | pa.Table) -> Any:
        """The first pass of a :class:`~datadiet.pipeline.steps.GlobalPass` step on a batch."""
        start, loading = time.perf_counter(), self.ledger.loading_seconds()
        assert self.plan.view is not None
        summary = two_pass.summarize(batch, self.plan.view.booking_on(self.ledger))
        self.seconds += time.perf_counter() - start - (self.ledger.loading_seconds() - loading)
        return summary

    @property
    def spilled(self) -> bool:
        return self.bytes > SPILL_BYTES

    def _spill(self, part: dict[str, np.ndarray], rows: int) -> int:
        """The part's arrays appended to the feature's scratch files; returns its rows."""
        folder = self.ctx.scratch("features")
        for name, array in part.items():
            if name not in self.spill:
                self.spill[name] = SpillFile(folder / f"step{self.index}-{name}.spill", array)
            self.spill[name].append(array)
        return rows

    def _output(self, name: str, rows: int, like: np.ndarray) -> np.ndarray:
        if not self.spilled:
            return np.empty((rows, *like.shape[1:]), like.dtype)
        path = self.ctx.scratch("features") / f"step{self.index}-{name}.npy"
        return np.lib.format.open_memmap(path, mode="w+", dtype=like.dtype,
                                         shape=(rows, *like.shape[1:]))

    def _parts_in_order(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Every part's rows and arrays in row order, a spilled part as views of the mapped
        files."""
        parts, self.parts = self.parts, []
        part_rows, self.part_rows = self.part_rows, []
        readers = {name: spill.read_back() for name, spill in self.spill.items()}
        for reader in readers.values():
            next(reader)  # opened, waiting for the first count
        parts.reverse()  # pop() from the end takes them in row order, dropping each when done
        try:
            for rows in part_rows:
                part = parts.pop()
                if isinstance(part, int):
                    yield rows, {name: reader.send(part) for name, reader in readers.items()}
                else:
                    yield rows, part
        finally:
            for reader in readers.values():
                reader.close()

    def features(self, alive: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """Every feature array over the ``alive`` input rows (of ``n``), in row order.

        Filled part by part into arrays of the final size, each part dropped once copied, so
        memory holds the features about once, not twice; features past ``SPILL_BYTES`` are
        filled into memory-mapped scratch files instead.
        """
        if not self.parts:
            assert self.plan.view is not None
            return self.step.empty_features(self.plan.view)
        if len(self.parts) == 1 and len(alive) == n and not self.spilled:
            self.part_rows.clear()
            return self.parts.pop()  # type: ignore[return-value]  # unspilled: a dict
        keep = np.zeros(n, bool)
        keep[alive] = True
        out: dict[str, np.ndarray] = {}
        start = done = 0
        for rows, part in self._parts_in_order():
            if not out:
                out = {name: self._output(name, len(alive), array)
                       for name, array in part.items()}
            wanted = keep[start : start + rows]
            taken = int(np.count_nonzero(wanted))
            for name, array in part.items():
                out[name][done : done + taken] = array if taken == rows else array[wanted]
            start, done = start + rows, done + taken
        return out


class MapThread:
    """Runs the steps' maps on a second thread, one batch behind the reader.

    Why: reading (pyarrow's parser, the UTF-8 check, the scratch copy) and the maps (compiled
    kernels) each leave a core idle much of the time; side by side they finish together.
    At most ``depth`` batches wait in between, so memory grows by a few batches, not the
    corpus. A map that fails stops the reader at its next batch and its exception is raised
    in the caller's thread, traceback and all.
    """

    def __init__(self, maps: list[FeatureMap], depth: int = 2) -> None:
        self.maps = maps
        self.queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, name="datadiet-maps", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is not None or self.cancelled:
                continue  # drain what is queued without working on it
            try:
                for feature_map in self.maps:
                    feature_map.add(batch)
            except BaseException as exc:  # re-raised in the reader's thread
                self.error = exc

    def put(self, batch: pa.RecordBatch) -> None:
        """Hand a batch over (the reader's ``on_batch``); raises a map's error, if one failed."""
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def finish(self) -> None:
        """Wait until every batch is mapped; raise a map's error, if one failed."""
        self.stop()
        if self.error is not None:
            raise self.error

    def stop(self, cancel: bool = False) -> None:
        """End the thread (idempotent); ``cancel`` skips the batches still queued."""
        self.cancelled = self.cancelled or cancel
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


class LocalExecutor(Executor):
    """Maps and reduces in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.maps: dict[int, FeatureMap] = {}
        self.corpus: StreamedCorpus | None = None

    def read(self, source: str | os.PathLike, plan: Plan, work: Path, options: dict[str, Any],
             ctx: StepContext) -> StreamedCorpus:
        """Read the corpus into the scratch folder, running the read-time maps on a second
        thread; a progress bar counts the documents read (the total is not known before)."""
        self.maps = {p.index: FeatureMap(p.step, p.index, ctx, plan) for p in plan.steps}
        during = [self.maps[p.index] for p in plan.read_maps]
        mapper = MapThread(during)
        with ctx.progress(None, "read" + "".join(f" + {m.step.name}" for m in during)) as bar:

            def on_batch(batch: pa.RecordBatch) -> None:
                mapper.put(batch)
                bar.update(batch.num_rows)

            def on_start(columns: list[str], fmt: RecordFormat | None) -> None:
                plan.begin(columns, fmt, ctx)

            try:
                self.corpus = stream_corpus(source, on_batch, work, on_start=on_start,
                                            **options)
                mapper.finish()
            finally:
                mapper.stop(cancel=True)
        plan.begin(self.corpus.schema.names, self.corpus.record_format, ctx)  # no batch at all
        return self.corpus

    def reduce(self, planned: PlannedStep, alive: np.ndarray, names: Any,
               ctx: StepContext) -> tuple[Selection, float]:
        """Map a deferred step over the survivors first; then the step's own reduce."""
        assert self.corpus is not None
        feature_map = self.maps.pop(planned.index)
        if planned.maps_during_read:
            features = feature_map.features(alive, self.corpus.rows)
            ctx.ledger.absorb(feature_map.ledger)
            return planned.step.select_from_features(names, ctx, features), feature_map.seconds
        self._map_survivors(feature_map, alive, ctx)
        features = feature_map.features(np.arange(len(alive)), len(alive))
        ctx.ledger.absorb(feature_map.ledger)
        return planned.step.select_from_features(names, ctx, features), 0.0

    def _map_survivors(self, feature_map: FeatureMap, alive: np.ndarray,
                       ctx: StepContext) -> None:
        """A deferred step's map over the rows still alive, read back from the scratch copy
        (twice for a step with a global pass: its summaries, then, with the combine's result
        for each piece, its map)."""
        name = feature_map.step.name
        two_pass = feature_map.step.global_pass()
        combined: list[Any] | None = None
        if two_pass is not None:
            with ctx.progress(len(alive), f"{name} (first pass)") as bar:
                summaries = []
                for piece in self._survivors(alive):
                    summaries.append(feature_map.summarize(two_pass, piece))
                    bar.update(piece.num_rows)
            combined = two_pass.combine(summaries) if summaries else []
        with ctx.progress(len(alive), name) as bar:
            for k, piece in enumerate(self._survivors(alive)):
                feature_map.add(piece, None if combined is None else combined[k])
                bar.update(piece.num_rows)

    def _survivors(self, alive: np.ndarray) -> Iterator[pa.Table]:
        """The ``alive`` rows, read back from the scratch copy in pieces of about
        :data:`SURVIVOR_BATCH` rows (the same pieces every time)."""
        corpus = self.corpus
        assert corpus is not None
        keep = np.zeros(corpus.rows, bool)
        keep[alive] = True
        start = rows = 0
        gathered: list[pa.RecordBatch] = []
        for batch in corpus.batches():
            mask = keep[start : start + batch.num_rows]
            start += batch.num_rows
            if mask.any():
                gathered.append(batch if mask.all() else batch.filter(arrow_bools(mask)))
                rows += gathered[-1].num_rows
            if rows >= SURVIVOR_BATCH or (start == corpus.rows and rows):
                yield pa.Table.from_batches(gathered)
                gathered, rows = [], 0

    def close(self) -> None:
        self.maps.clear()
