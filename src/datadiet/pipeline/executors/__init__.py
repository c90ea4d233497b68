"""Executors: how a curation plan runs. The step decides *what*; the executor decides *where*.

A spec compiles to a :class:`~datadiet.pipeline.executors.plan.Plan`: its steps in order. Every
streamable step has one shape, a **map** then a **reduce**:

* the map, :meth:`Step.row_features(texts) <datadiet.pipeline.steps.Step.row_features>`, is a
  pure function of a batch of texts (an Arrow string array or a list of str) returning
  row-aligned NumPy arrays. The arrays of a row never depend on the batch it came in, so an
  executor may map any partition of the corpus anywhere, in any order, and concatenate.
* the reduce, :meth:`Step.select_from_features(names, ctx, features)
  <datadiet.pipeline.steps.Step.select_from_features>`, decides from the live rows' features
  (row-aligned, in input order) and returns a :class:`~datadiet.pipeline.selection.Selection`.
  ``names`` is an Arrow table holding only the id column: a reduce may read ids, nothing else.

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
  curate`` for every streamable spec.
* :class:`~datadiet.pipeline.executors.dask.DaskExecutor` — a ``distributed`` cluster (a
  ``LocalCluster`` it starts, or a scheduler address): the reader scatters partitions to the
  workers as it reads, maps run there and their features stay there (spilled by Dask's worker
  memory manager), reduces are distributed as above. Only small results come back: labels of
  removed rows, verified edges, per-row decisions.

Both hand their result (the live rows after each step) to the one runner loop and the one
writer in :mod:`datadiet.pipeline.curate`. Specs with a model step (perplexity, IFD,
embeddings...) are not map/reduce steps yet: they run in-process on a ``datasets.Dataset``.
"""

from datadiet.pipeline.executors.local import LocalExecutor
from datadiet.pipeline.executors.plan import Executor, Plan, PlannedStep, maps_during_read

__all__ = ["Executor", "LocalExecutor", "Plan", "PlannedStep", "maps_during_read"]
