"""The selector protocol: every data-selection method is one :class:`Step`.

A step sees a ``datasets.Dataset`` and a :class:`StepContext` and returns a
:class:`~datadiet.pipeline.selection.Selection` — it never mutates or filters the dataset itself.
Every built-in step splits into a per-row map and a global reduce (:meth:`Step.row_features`
or :meth:`Step.record_features`, :meth:`Step.select_from_features`; a map that needs the whole
input first declares a :class:`GlobalPass`), so it also runs without a ``Dataset``:
``datadiet curate`` on files streams every spec — maps on Arrow batches, reduces on the
features — and ``select`` on a ``Dataset`` is the same map and reduce (:meth:`Step.select_by_map`).
The runner (:func:`datadiet.pipeline.curate.curate`) applies selections in order, so every step is
testable alone and composable in any order, and the manifest records each one.

The step author's contract for map/reduce steps, and how executors run them (in-process, or on
a Dask cluster with the reduces distributed), is written down once, in
:mod:`datadiet.pipeline.executors` (and docs/engine.md).

Steps read text in batches (``ctx.iter_texts``) and keep per-row numbers in NumPy arrays (or
memory-mapped files under ``ctx.work_dir`` for big corpora), so memory stays bounded by the
batch size plus a few bytes per row.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import shutil
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from datadiet.pipeline.atomic import owned_temp_dir
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.embedding import Embedder
from datadiet.pipeline.models.scoring import LMScorer
from datadiet.pipeline.models.shared import shared_embedder, shared_lm_scorer
from datadiet.pipeline.records import RecordFormat, ensure_text, sft_format, turns
from datadiet.pipeline.selection import Selection

if TYPE_CHECKING:
    from datasets import Dataset

STEP_REGISTRY: dict[str, type[Step]] = {}
BUILTIN_STEPS_PACKAGE = "datadiet.selectors"


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step available to specs by its ``name``."""
    if cls.name in STEP_REGISTRY and STEP_REGISTRY[cls.name] is not cls:
        raise ValueError(f"step name {cls.name!r} registered twice")
    STEP_REGISTRY[cls.name] = cls
    return cls


@dataclass
class StepContext:
    """What a step may use besides the dataset: the text column, scratch space, models, ledger.

    Models are created lazily and shared across steps of one run (one LM scorer, one embedder —
    the rule of the house), so a spec with both ``perplexity`` and another LM step loads the
    model once.
    """

    text_field: str = "text"
    id_field: str = "id"
    ledger: Ledger = field(default_factory=Ledger)
    work_dir: Path | None = None
    seed: int = 0
    batch_size: int = 1000
    show_progress: bool = True
    scorer_model: str | None = None
    embedder_model: str | None = None
    record_format: RecordFormat | None = None  # how rows were read (fine-tuning steps need it)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def iter_texts(
        self, ds: Dataset, desc: str = "", batch_size: int | None = None
    ) -> Iterator[list[str]]:
        """Yield the text column in batches, with a progress bar that estimates time left."""
        bs = batch_size or self.batch_size
        n = len(ds)
        column = ds.select_columns([self.text_field])
        with self.progress(n, desc) as bar:
            for start in range(0, n, bs):
                batch = column[start : start + bs][self.text_field]
                yield batch
                bar.update(len(batch))

    def iter_text_arrays(
        self, ds: Dataset, desc: str = "", batch_size: int | None = None
    ) -> Iterator[pa.ChunkedArray]:
        """Yield the text column in batches as Arrow string arrays, with a progress bar.

        For steps whose compiled kernels read UTF-8 bytes: a batch of a memory-mapped dataset
        is its bytes in place, with no Python string per row.
        """
        bs = batch_size or self.batch_size
        n = len(ds)
        column = ds.select_columns([self.text_field]).with_format("arrow")
        with self.progress(n, desc) as bar:
            for start in range(0, n, bs):
                batch = column[start : start + bs][self.text_field]
                yield batch
                bar.update(len(batch))

    def progress(self, total: int | None, desc: str = "") -> tqdm:
        """A progress bar in documents (``total=None``: a count and a rate, no time left)."""
        return tqdm(total=total, desc=desc, unit="doc", disable=not self.show_progress,
                    leave=False, dynamic_ncols=True)

    def scratch(self, name: str) -> Path:
        """A scratch folder for on-disk arrays (signatures, scores) of this run.

        The runner gives each run a folder it removes however the run ends. A step run outside
        it (a test, a flow task calling ``select`` itself) gets a temp folder owned by this
        context: removed when the context is collected, or at interpreter exit at the latest.
        """
        if self.work_dir is None:
            self.work_dir = owned_temp_dir("datadiet-step-")
            weakref.finalize(self, shutil.rmtree, self.work_dir, True)
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lm_scorer(self) -> LMScorer:
        """The run's shared :class:`~datadiet.pipeline.models.scoring.LMScorer`."""
        if "scorer" not in self._cache:
            self._cache["scorer"] = LMScorer(self.scorer_model, ledger=self.ledger)
        return self._cache["scorer"]


@dataclass(frozen=True)
class RecordView:
    """How a map reads a batch's records: which column holds the rendered text, and the
    record format the reader settled (``None``: not known, a step called on its own).

    Small and picklable: an executor sends it with each map to wherever the map runs.
    """

    text_field: str = "text"
    record_format: RecordFormat | None = None
    scorer_model: str | None = None  #: the run's LM (``None``: the default)
    embedder_model: str | None = None  #: the run's embedder (``None``: the default)
    #: where a map books its model work: the executor gives each map its own and merges
    #: them into the run's ledger, under the step (:meth:`Ledger.absorb`)
    ledger: Ledger | None = None
    #: a :class:`GlobalPass` step's map: what the step's combine gave this piece of the rows
    #: (``None`` for every other map)
    combined: Any = None

    @classmethod
    def of(cls, ctx: StepContext) -> RecordView:
        return cls(ctx.text_field, ctx.record_format, ctx.scorer_model, ctx.embedder_model)

    def booking_on(self, ledger: Ledger) -> RecordView:
        """This view, its maps booking on ``ledger``."""
        return dataclasses.replace(self, ledger=ledger)

    def with_combined(self, combined: Any) -> RecordView:
        """This view for the map of one piece of a :class:`GlobalPass` step: ``combined`` is
        what the step's combine gave that piece."""
        return dataclasses.replace(self, combined=combined)

    def lm_scorer(self, model: str | None = None) -> AbstractContextManager[LMScorer]:
        """The process's one scorer for ``model`` (``None``: the run's), loaded once per
        process and booking on this view's ledger while the block runs."""
        return shared_lm_scorer(model or self.scorer_model, self._ledger())

    def embedder(self) -> AbstractContextManager[Embedder]:
        """The process's one embedder (the run's model), as :meth:`lm_scorer`."""
        return shared_embedder(self.embedder_model, self._ledger())

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise RuntimeError("a model map needs a ledger: view.booking_on(Ledger())")
        return self.ledger

    def texts(self, batch: pa.RecordBatch | pa.Table) -> Any:
        """The rendered text column of ``batch`` (an Arrow string array)."""
        return batch.column(self.text_field)

    def fine_tuning_format(self, columns: list[str], step: str) -> RecordFormat:
        """The fine-tuning format of rows with ``columns`` (``ValueError`` when they have
        none)."""
        return sft_format(columns, self.record_format, self.text_field, step=step)

    def turn_columns(self, columns: list[str], step: str) -> list[str]:
        """The columns holding a row's (prompt, response) turns, of those in ``columns``."""
        fmt = self.fine_tuning_format(columns, step)
        return [c for c in fmt.data_columns if c in columns]

    def turns(self, batch: pa.RecordBatch | pa.Table, step: str) -> list[list[tuple[str, str]]]:
        """Every row of ``batch`` as its (prompt, response) turns (see
        :func:`datadiet.pipeline.records.turns`), read from the fine-tuning columns."""
        fmt = self.fine_tuning_format(batch.schema.names, step)
        cols = {c: batch.column(c).to_pylist() for c in fmt.data_columns
                if c in batch.schema.names}
        return [turns({c: values[i] for c, values in cols.items()}, fmt)
                for i in range(batch.num_rows)]


@dataclass(frozen=True)
class DuplicateGroups:
    """A reduce of the shape "rows with equal keys are one group; each group keeps its first
    row" (exact dedup). An executor may hash-partition the keys so that each worker groups a
    share of them; :meth:`Step.select_from_labels` then turns the labels into the Selection.

    ``first_of_group(keys)``: for rows in input order, the index of each row's group's first
    row (a pure function; the executor calls it on one partition's rows, sorted by row).
    """

    key: str  #: the feature holding each row's key: an ``(n, k)`` array, compared row by row
    first_of_group: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class NearDuplicates:
    """A reduce of the shape "LSH buckets -> candidate pairs -> verified pairs -> connected
    components; each component keeps its smallest row" (MinHash dedup).

    An executor may shuffle the band keys so that each worker owns a share of the buckets,
    verify each candidate pair where the signatures are, and join the verified edges; every
    function here is pure, so where it runs does not change the answer.
    """

    signatures: str  #: feature: ``(n, num_perm)`` signatures
    band_keys: str  #: feature: ``(n, bands)`` bucket keys
    valid: str  #: feature: ``(n,)`` bool, rows that may be clustered at all
    #: keys ``(m, 1)`` of rows in row order -> their candidate pairs ``(p, 2)`` (``i < j``,
    #: local indices), by the step's bucket rule (all pairs or a star)
    bucket_pairs: Callable[[np.ndarray], np.ndarray]
    #: ``(signatures, pairs)`` -> the similarity of each pair
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray]
    threshold: float | None  #: pairs below it are dropped; ``None``: no verification
    #: ``(n, pairs)`` -> each node's label, the smallest node of its component
    components: Callable[[int, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GlobalPass:
    """A map that needs something of the whole input first: "a first map, a global combine,
    then the step's map reading the combine's small result, then the reduce".

    DSIR weighs a row by its n-grams' log ratio of two distributions, and one of them is
    fitted on the whole input; ``relevance`` scores a row's response under other rows'
    instructions, chosen over the whole input. An executor runs such a step over the rows
    alive at its turn, cut into pieces (a batch in-process, a partition on Dask):

    1. ``summarize(batch, view)`` on every piece, where the piece is: a small, picklable
       summary (DSIR: a bucket-count vector; relevance: the rows' instructions);
    2. ``combine(summaries)`` once, in the driver, on the summaries in row order: one result
       per piece, in the same order (DSIR: the same log-ratio vector for each; relevance: the
       contrast instructions each piece's rows need, and no others);
    3. the step's map, :meth:`Step.record_features`, on every piece, with the piece's result
       in ``view.combined``: row-aligned features, as for any step;
    4. the step's reduce, :meth:`Step.select_from_features`, as for any step.

    Both functions are pure; the pieces of steps 1 and 3 are the same rows. Where the pieces
    are cut does not change the answer, since ``combine`` sees every summary.
    """

    summarize: Callable[[pa.RecordBatch | pa.Table, RecordView], Any]
    combine: Callable[[list[Any]], list[Any]]


class Step(ABC):
    """One data-selection method. Subclasses set ``name`` and take keyword parameters only.

    ``params()`` returns exactly the constructor arguments, so ``type(step)(**step.params())``
    rebuilds the step — that is what makes a manifest repeatable.
    """

    name: ClassVar[str]
    #: True when the decision for a row depends on that row alone (a quality rule, a fixed
    #: threshold). Such a step gives the same answer on any shard of a corpus as on the whole,
    #: so a sharded runner may decide every shard in parallel, ahead of the steps before it.
    row_local: ClassVar[bool] = False
    #: True when the map is dear (a model scores or embeds each row): an executor then maps
    #: only the rows still alive when the step's turn comes, not every row as it is read.
    maps_survivors: ClassVar[bool] = False
    #: True when the step gives a score per row, which the runner keeps as ``<name>_score``
    #: (so a later step, ``deita``, may read it): the spec check counts on it.
    writes_score: ClassVar[bool] = False
    #: True when the step reads fine-tuning turns (instruction/response), not just the text.
    needs_instruction_data: ClassVar[bool] = False

    def reads_columns(self) -> list[str]:
        """Columns besides the id and text this step reads: the spec check makes sure each
        exists in the input or is written by an earlier step, before any step runs."""
        return []

    def writes_paths(self) -> list[Path]:
        """Folders this step writes besides the output (a score cache): checked before any
        step runs to be folders, and outside the run's output and inputs."""
        return []

    def params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {
            p: getattr(self, p)
            for p in sig.parameters
            if p != "self" and sig.parameters[p].kind is inspect.Parameter.KEYWORD_ONLY
        }

    @abstractmethod
    def select(self, ds: Dataset, ctx: StepContext) -> Selection:
        """Decide which rows of ``ds`` to keep; removed rows need a reason."""

    def row_features(self, texts: Any) -> dict[str, Any]:
        """The per-row arrays (hashes, signatures) this step decides from, for a batch of texts.

        Steps whose decision splits into a pure per-row map and a global reduce override this
        (or :meth:`record_features`, to read more than the text) and
        :meth:`select_from_features`. The arrays of a row must not depend on the batch it
        came in, so a sharded runner may compute them shard by shard on other workers and
        concatenate them in row order. The default: the step has no such split.
        """
        raise NotImplementedError(f"step {self.name!r} has no per-row features")

    def map_columns(self, view: RecordView, columns: list[str]) -> list[str]:
        """The columns of the read batches (``columns``) the map reads: by default the text.

        An executor ships only these to the map (a Dask partition holds the union over the
        plan's steps), so a text-only step costs what it did before record-aware maps."""
        return [view.text_field]

    def record_features(self, batch: pa.RecordBatch | pa.Table,
                        view: RecordView) -> dict[str, Any]:
        """The map over records: ``batch`` holds (at least) the :meth:`map_columns`.

        Override this instead of :meth:`row_features` when the map reads more than the text
        (a fine-tuning row's turns: :meth:`RecordView.turns`). Same purity rule. The default
        maps the text column with :meth:`row_features`."""
        return self.row_features(view.texts(batch))

    def prepare(self, ctx: StepContext) -> None:  # noqa: B027 - most steps need nothing
        """Run once, in the driver, before the first map and after the record format is
        known (``ctx.record_format``): load what every map needs and the batch cannot give
        (an evaluation set's n-gram hashes). What it sets on the step travels with the step
        to every map, so keep it small; it must not change :meth:`params`."""

    def empty_features(self, view: RecordView) -> dict[str, Any]:
        """The map's arrays for no rows (what a reduce over an empty corpus reads)."""
        columns = [view.text_field, *(view.record_format.data_columns
                                      if view.record_format is not None else [])]
        batch = pa.table({c: pa.array([], pa.string()) for c in dict.fromkeys(columns)})
        try:
            wanted = self.map_columns(view, batch.schema.names)
        except ValueError:
            wanted = [view.text_field]
        return self.record_features(batch.select(wanted), view.booking_on(Ledger()))

    def select_by_map(self, ds: Dataset, ctx: StepContext) -> Selection:
        """:meth:`select` as the map over ``ds``'s batches, then the reduce: what a step
        whose decision is its map plus its reduce uses, so that the Python API on a
        ``Dataset`` and the executors on files decide alike (a :class:`GlobalPass` step's
        summaries and combine included)."""
        self.prepare(ctx)
        view = RecordView.of(ctx)
        if ctx.text_field not in ds.column_names:  # an instruction dataset, not rendered yet
            ds = ensure_text(ds, ctx.record_format, ctx.text_field, self.name)
        wanted = self.map_columns(view, list(ds.column_names))
        # a map reading no column (a draw) still gets its batches' rows counted
        table = ds.select_columns(wanted or ds.column_names[:1]).with_format("arrow")
        pieces = [table[start : start + ctx.batch_size]
                  for start in range(0, len(ds), ctx.batch_size)]
        booked = Ledger()
        view = view.booking_on(booked)
        views = [view] * len(pieces)
        if (two_pass := self.global_pass()) is not None and pieces:
            combined = two_pass.combine([two_pass.summarize(piece, view) for piece in pieces])
            views = [view.with_combined(c) for c in combined]
        with ctx.progress(len(ds), self.name) as bar:
            parts = []
            for piece, piece_view in zip(pieces, views, strict=True):
                parts.append(self.record_features(piece, piece_view))
                bar.update(piece.num_rows)
        ctx.ledger.absorb(booked)
        if not parts:
            features = self.empty_features(view)
        else:
            features = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return self.select_from_features(ds, ctx, features)

    def select_from_features(self, ds: Dataset | pa.Table, ctx: StepContext,
                             features: dict[str, Any]) -> Selection:
        """The global half: :meth:`select` on ``ds`` from its rows' :meth:`row_features`
        (each array row-aligned with ``ds``).

        ``ds`` names the rows: a ``Dataset``, or in a streamed file run (the maps ran while
        the file was read, no ``Dataset`` was built) an Arrow table with just the id column.
        The reduce may read ids from it (:func:`datadiet.selectors.common.row_ids`), nothing
        else."""
        raise NotImplementedError(f"step {self.name!r} has no per-row features")

    def global_pass(self) -> GlobalPass | None:
        """What this step's map needs of the whole input before it runs (see
        :class:`GlobalPass`); ``None`` (the default): the map reads its batch alone. A step
        with a global pass maps the rows alive at its turn, never during the read."""
        return None

    def distributed_reduce(self) -> DuplicateGroups | NearDuplicates | None:
        """The shape of this step's reduce, when an executor may distribute it.

        ``None`` (the default): a row-local step is decided partition by partition (its stats
        must add up over partitions: numbers sum, equal values stay); any other step's reduce
        runs in one process on the live rows' features. A step returning a shape implements
        :meth:`select_from_labels`, which must give what :meth:`select_from_features` gives.
        """
        return None

    def select_from_labels(self, ds: Dataset | pa.Table, ctx: StepContext, labels: np.ndarray,
                           stats: dict[str, Any]) -> Selection:
        """The last part of a distributed reduce: ``labels[i]`` is the row that row ``i`` is a
        copy of (``i`` itself for a kept row); ``stats`` are the executor's counts (candidate
        and merged pairs of :class:`NearDuplicates`)."""
        raise NotImplementedError(f"step {self.name!r} has no distributed reduce")

    @classmethod
    def splits_into_row_features(cls) -> bool:
        """Whether the step implements the map (:meth:`row_features` or
        :meth:`record_features`) / global reduce split."""
        return cls.row_features is not Step.row_features \
            or cls.record_features is not Step.record_features

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def load_builtin_steps() -> None:
    """Register the built-in steps (and any ``datadiet.steps`` entry points) by module name.

    Why by name: the pipeline sits below the selectors in the import graph (selectors import
    the pipeline, never the reverse), so the registry discovers step modules the way a plugin
    system does, by importing the package that registers them, not by a static import.
    """
    importlib.import_module(BUILTIN_STEPS_PACKAGE)
    for entry in importlib.metadata.entry_points(group="datadiet.steps"):
        if entry.name not in STEP_REGISTRY:
            entry.load()


def build_step(name: str, params: dict[str, Any] | None = None) -> Step:
    """Instantiate a registered step from a spec entry, with a clear error for typos."""
    if name not in STEP_REGISTRY:
        load_builtin_steps()
    if name not in STEP_REGISTRY:
        known = ", ".join(sorted(STEP_REGISTRY))
        raise ValueError(f"unknown step {name!r}; known steps: {known}")
    cls = STEP_REGISTRY[name]
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise ValueError(f"bad parameters for step {name!r}: {exc}") from exc
