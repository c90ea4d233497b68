"""Executors: how a curation plan runs. The step decides *what*; the executor decides *where*.

A spec compiles to a :class:`~datadiet.pipeline.executors.plan.Plan`: its steps in order. Every
step has one shape, a **map** then a **reduce**:

* the map, :meth:`Step.row_features(texts) <datadiet.pipeline.steps.Step.row_features>`, is a
  pure function of a batch of texts (an Arrow string array or a list of str) returning
  row-aligned NumPy arrays. The arrays of a row never depend on the batch it came in, so an
  executor may map any partition of the corpus anywhere, in any order, and concatenate.
  A map that reads more than the text overrides :meth:`Step.record_features(batch, view)
  <datadiet.pipeline.steps.Step.record_features>` instead and names the columns it reads in
  :meth:`~datadiet.pipeline.steps.Step.map_columns` (a fine-tuning row's turns:
  :meth:`RecordView.turns <datadiet.pipeline.steps.RecordView.turns>`); the executor ships
  those columns only. What every map needs and no batch holds (an evaluation set's n-grams,
  the name of the model the maps load) is loaded once, in the driver, by
  :meth:`~datadiet.pipeline.steps.Step.prepare`, after the reader settled the record format and
  before the first map (:meth:`Plan.begin <datadiet.pipeline.executors.plan.Plan.begin>`, which
  also runs the runner's check of the spec against the input's columns).
* a model step's map scores or embeds its batch with the process's one scorer or embedder
  (``view.lm_scorer()``, ``view.embedder()``: :mod:`datadiet.pipeline.models.shared`), loaded
  once per process, and books its tokens and FLOPs on the ledger its view carries; the executor
  gives each map its own ledger and merges them into the run's, under the step
  (:meth:`Ledger.absorb <datadiet.pipeline.ledger.Ledger.absorb>`). Such a step sets
  ``maps_survivors``: it maps only the rows alive when its turn comes.
* a map that needs something of the step's whole input first (DSIR's raw-data n-gram
  distribution; ``relevance``'s contrast instructions, drawn over all rows) declares it with
  :meth:`Step.global_pass() <datadiet.pipeline.steps.Step.global_pass>`, a
  :class:`~datadiet.pipeline.steps.GlobalPass` ``(summarize, combine)``: over the rows alive at
  the step's turn, cut into pieces (batches here, partitions on Dask), the executor runs
  ``summarize(batch, view)`` on every piece where the piece is, ``combine(summaries)`` once in
  the driver (one result per piece), then the step's map on the same pieces, each reading its
  result in ``view.combined``. Summaries and results must be small (a bucket-count vector; a
  piece's rows' instructions); such a step always maps at its turn.
* the reduce, :meth:`Step.select_from_features(names, ctx, features)
  <datadiet.pipeline.steps.Step.select_from_features>`, decides from the live rows' features
  (row-aligned, in input order) and returns a :class:`~datadiet.pipeline.selection.Selection`.
  ``names`` is an Arrow table holding the id column and the score columns the step reads
  (``reads_columns``, e.g. an earlier step's ``ifd_score``): a reduce may read those, nothing
  else.

What a step author may add, so that executors can do better than "gather every feature into
one process":

* ``row_local = True``: the decision for a row reads that row alone (quality rules). The
  reduce is then empty in the distributed sense: an executor decides partition by partition,
  and maps only the rows still alive when the step's turn comes (never rows already removed).
  The step's ``stats`` must add up over partitions (numbers sum, equal values stay).
* :meth:`Step.distributed_reduce() <datadiet.pipeline.steps.Step.distributed_reduce>` returning
  a reduce shape with the step's own pure functions, plus
  :meth:`~datadiet.pipeline.steps.Step.select_from_labels`:

  - :class:`~datadiet.pipeline.steps.DuplicateGroups` (exact dedup): keys are hash-partitioned,
    each partition grouped on its own worker, the first row of a group (by input order) kept;
  - :class:`~datadiet.pipeline.steps.NearDuplicates` (MinHash): band keys shuffled so each
    worker owns a share of the buckets, candidate pairs routed to the rows' owners and
    verified where the signatures are, connected components over the verified edges.

  Both must give exactly what ``select_from_features`` gives in one process (the tests run
  every such step on both executors and compare the kept rows and the removed table).

Executors:

* :class:`~datadiet.pipeline.executors.local.LocalExecutor` — one process: maps on a second
  thread while the reader parses, features spill to memory-mapped scratch files past
  ``SPILL_BYTES``, reduces in the process. The default of ``curate_path`` and ``datadiet
  curate`` for every spec read from files.
* :class:`~datadiet.pipeline.executors.dask.DaskExecutor` — a ``distributed`` cluster (a
  ``LocalCluster`` it starts, or a scheduler address): the reader scatters partitions to the
  workers as it reads, maps run there and their features stay there (spilled by Dask's worker
  memory manager), reduces are distributed as above. Only small results come back: labels of
  removed rows, verified edges, per-row decisions.

Both hand their result (the live rows after each step) to the one runner loop and the one
writer in :mod:`datadiet.pipeline.curate`. Every spec read from files runs on them (a step
without a map is refused before the read); the Python API on a ``datasets.Dataset`` runs the
same maps and reduces over its batches (:meth:`Step.select_by_map
<datadiet.pipeline.steps.Step.select_by_map>`).
"""

from datadiet.pipeline.executors.local import LocalExecutor
from datadiet.pipeline.executors.plan import Executor, Plan, PlannedStep, maps_during_read

__all__ = ["Executor", "LocalExecutor", "Plan", "PlannedStep", "maps_during_read"]
