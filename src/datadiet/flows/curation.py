"""The ``curate`` flow: a spec and a corpus in, the curated dataset and its manifest out.

The flow is one cached task around :func:`datadiet.pipeline.curate.curate_path`, the library's
one engine, with the executor the parameters choose (:mod:`datadiet.pipeline.executors`):
``runner="local"`` runs the plan in this process (the maps on a thread beside the reader),
``runner="dask"`` on a Dask cluster through ``DaskExecutor``, exactly as ``datadiet curate
--executor dask`` does: the maps on the workers, the dedup reduces distributed, the one writer
in this process. The cluster is the one at ``dask_address``, or a ``LocalCluster`` of
``workers`` processes on 127.0.0.1 started for the run and closed after it. Both executors give
the same output, so the kept rows do not depend on the runner, and neither does the task's
cache key.

The workers run the library's own functions (the steps' maps and reduces), never a Prefect
task: they import neither Prefect nor this module, start no Prefect API of their own, and
import torch only when a step's map needs a model. The progress artifact moves after the read
and after each step's reduce, from inside the task.

Caching: the input is named by the fingerprint of its bytes, the spec by the hash of its
normalised form (every parameter filled in), so an unchanged rerun runs no task at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dask.utils import parse_bytes
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from datadiet.flows.common import (
    FlowParams,
    cached_task,
    flow_run_namer,
    inputs_key_without,
    run_checked,
    series_key,
    stored,
    task_run_namer,
)
from datadiet.flows.report import (
    bar_plot,
    before_after_rows,
    image_section,
    markdown_table,
    publish,
)
from datadiet.kernels.model import LlamaConfig
from datadiet.pipeline.curate import curate_path, load_spec_fields, parse_spec, read_spec, spec_of
from datadiet.pipeline.executors import Executor, LocalExecutor
from datadiet.pipeline.executors.dask import DaskExecutor
from datadiet.pipeline.io import MANIFEST_FILE, load_corpus, source_fingerprint
from datadiet.pipeline.manifest import Manifest, jsonable
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.pipeline.records import parse_fields
from datadiet.pipeline.steps import build_step

DEFAULT_SPEC = """\
- exact_dedup: {}
- minhash_dedup: {threshold: 0.7, num_perm: 128, ngram: 5}
- quality: {}
"""


RunnerKind = Literal["local", "dask"]
Workers = Annotated[int, Field(ge=1, le=512)]
Shards = Annotated[int, Field(ge=0, le=100_000)]
Positive = Annotated[int, Field(ge=1)]
NonEmpty = Annotated[str, Field(min_length=1)]


def _memory_size(value: str) -> str:
    """A Dask worker's memory limit: ``auto`` or a size Dask reads (``400MiB``, ``2GB``)."""
    if value != "auto":
        try:
            parse_bytes(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a size like 400MiB or 2GB, nor auto") from None
    return value


WorkerMemory = Annotated[str, AfterValidator(_memory_size)]

#: The run's progress artifact (percent): the curate task moves it from 0 to CURATED (the read
#: takes READ_SHARE of that, each step's reduce an equal part of the rest), the token counts
#: from there to 100.
CURATED = 80.0
READ_SHARE = 0.4


class ScaleOut(BaseModel):
    """Where the plan runs: the flow's ``runner``, ``dask_address``, ``workers`` and
    ``worker_memory`` parameters, as the executor of ``curate_path``."""

    model_config = ConfigDict(extra="forbid")

    runner: RunnerKind = "local"
    address: str | None = None
    workers: Workers = 2
    worker_memory: WorkerMemory = "auto"

    @contextmanager
    def executor(self) -> Iterator[Executor]:
        """The executor for one run (a local cluster started here closes with it)."""
        if self.runner == "local":
            yield LocalExecutor()
            return
        with DaskExecutor(address=self.address, workers=self.workers,
                          memory_limit=self.worker_memory) as executor:
            yield executor

    def describe(self) -> str:
        """Where the run ran, as the report says it."""
        if self.runner == "local":
            return "this process (local executor)"
        if self.address:
            return f"Dask at {self.address}"
        return f"Dask, a local cluster of {self.workers} workers ({self.worker_memory} memory each)"


def _spec_data(spec: str) -> tuple[Any, str]:
    """The parsed spec and what to call it in errors: a file's path, or ``spec`` for text."""
    path = Path(spec).expanduser()
    if "\n" not in spec and path.is_file():
        return read_spec(path), str(path)
    try:
        return yaml.safe_load(spec), "spec"
    except yaml.YAMLError as exc:
        raise ValueError(f"spec: not valid YAML: {exc}") from exc


def normalised_spec(spec: str) -> list[dict[str, dict[str, Any]]]:
    """The spec as ``[{step: params}]`` with every parameter filled in; errors name the entry.

    ``spec`` is a path to a YAML spec or a ``manifest.json`` (to repeat a run), or the YAML
    itself. Building every step here is what validates the whole spec before any task runs.
    """
    data, source = _spec_data(spec)
    steps = []
    for i, (name, params) in enumerate(parse_spec(data, source), start=1):
        try:
            steps.append(build_step(name, params))
        except ValueError as exc:
            raise ValueError(f"{source}: entry {i}: {exc}") from exc
    return spec_of(steps)


def spec_fields(spec: str) -> str | dict[str, Any]:
    """How the spec says to read records (its ``fields:`` entry, e.g. ``{prompt: question,
    completion: answer}``), as ``curate_path`` takes it: ``"auto"`` when the spec says nothing.
    A spec file or manifest is read by the library's own rule (a manifest repeats its run's
    record format)."""
    path = Path(spec).expanduser()
    if "\n" not in spec and path.is_file():
        found = load_spec_fields(path)
        return "auto" if found is None else found.describe()
    data, source = _spec_data(spec)
    value = data.get("fields") if isinstance(data, dict) else None
    try:
        parse_fields(value)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return "auto" if value is None else jsonable(value)


class CurateParams(FlowParams):
    """The ``curate`` flow's parameters, checked together: the source exists, the spec builds,
    the output is not the input. The flow builds one from its arguments before any task runs."""

    source: str
    out: str
    spec: str
    text_field: NonEmpty
    id_field: NonEmpty
    keep_fields: list[str] | None
    on_error: Literal["raise", "skip"]
    overwrite: bool
    rows_per_shard: Positive
    runner: RunnerKind
    dask_address: str | None
    workers: Workers
    worker_memory: WorkerMemory
    shards: Shards
    tokenizer: str | None
    report_model: str
    context: Positive

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str) -> str:
        source_fingerprint(value)  # raises DataError (a ValueError) naming a missing path
        return value

    @field_validator("report_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        LlamaConfig.preset(value)
        return value

    @model_validator(mode="after")
    def _spec_builds(self) -> CurateParams:
        normalised_spec(self.spec)
        spec_fields(self.spec)
        if Path(self.out).expanduser().resolve() == Path(self.source).expanduser().resolve():
            raise ValueError("out: the output must not replace its own input")
        return self

    @property
    def scale(self) -> ScaleOut:
        return ScaleOut(runner=self.runner, address=self.dask_address, workers=self.workers,
                        worker_memory=self.worker_memory)


# ``engine`` (where the plan runs) and ``progress_id`` (the run's progress artifact) are left
# out of the cache key: every executor writes the same output, so a result computed on Dask
# serves a rerun in one process, and the other way round.
@cached_task(task_run_name=task_run_namer("curate {source} → {out}/"),
             cache_key_fn=inputs_key_without("engine", "progress_id"))
def curate_corpus(source: str, fingerprint: str, spec: list, fields: str | dict, out: str,
                  text_field: str, id_field: str, keep_fields: list, on_error: str,
                  overwrite: bool, rows_per_shard: int, engine: dict,
                  progress_id: str | None = None) -> dict:
    """The library's one engine over the whole spec, on the executor ``engine`` describes
    (a :class:`ScaleOut`); the progress artifact ``progress_id`` moves as steps finish."""
    def on_progress(done: int, phases: int) -> None:
        """The read takes READ_SHARE of the curation's part, each step's reduce an equal part
        of the rest."""
        if progress_id:
            share = READ_SHARE + (1 - READ_SHARE) * (done - 1) / max(1, phases - 1)
            update_progress_artifact(progress_id, progress=CURATED * share)

    with ScaleOut(**engine).executor() as executor:
        result = curate_path(source, spec, out, text_field=text_field, id_field=id_field,
                             keep_fields=keep_fields, on_error=on_error, overwrite=overwrite,
                             rows_per_shard=rows_per_shard, show_progress=False, fields=fields,
                             executor=executor, on_progress=on_progress)
    manifest_path = Path(out) / MANIFEST_FILE
    return {"out": str(out), "manifest": str(manifest_path), "rows_in": result.manifest.input["rows"],
            "rows_out": result.rows_kept, "output_fingerprint": result.manifest.output["fingerprint"]}


@cached_task(task_run_name=task_run_namer("count tokens of {data}"))
def count_tokens(data: str, fingerprint: str, text_field: str, tokenizer: str | None,
                 fields: str | dict = "auto") -> dict:
    """Rows and tokens (each row plus one end-of-text token, as training packs them); records
    are read as the spec's ``fields`` say (a fine-tuning row counts its rendered turns)."""
    ds = load_corpus(data, text_field=text_field, fields=fields).dataset
    tok = load_tokenizer(tokenizer)
    tokens = 0
    for start in range(0, len(ds), 1000):
        texts = [t or "" for t in ds[start : start + 1000][text_field]]
        tokens += sum(len(ids) + 1 for ids in tok(texts, add_special_tokens=False)["input_ids"])
    return {"rows": len(ds), "tokens": tokens}


# Why no log_prints: a print under it becomes a log line, and the `datasets` fingerprinting
# behind every reader lets dill disassemble functions with print() (dill.detect.nestedglobals
# reads the listing back from a swapped sys.stdout; under log_prints it lands in the run's log
# instead). datadiet's flows say what happened through the run logger.
@flow(name="datadiet-curate", flow_run_name=flow_run_namer("curate {source} → {out}/"),
      log_prints=False, validate_parameters=True)
def curate(
    source: str,
    out: str,
    spec: str = DEFAULT_SPEC,
    text_field: NonEmpty = "text",
    id_field: NonEmpty = "id",
    keep_fields: list[str] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    overwrite: bool = False,
    rows_per_shard: Positive = 100_000,
    runner: RunnerKind = "local",
    dask_address: str | None = None,
    workers: Workers = 2,
    worker_memory: WorkerMemory = "auto",
    shards: Shards = 0,
    tokenizer: str | None = None,
    report_model: str = "smollm2-135m",
    context: Positive = 2048,
    storage: str | None = None,
) -> dict:
    """Curate a corpus with a spec of steps; publish the report as artifacts.

    Args:
        source: The corpus: JSONL(.gz), Parquet or text file or folder, or a saved Hugging Face
            dataset.
        out: Output folder: the curated dataset (Parquet shards and a dataset card), with the
            manifest and the removed rows hidden in .datadiet/, written atomically.
        spec: The steps: YAML text like `- exact_dedup: {}`, or the path of a spec file or of a
            manifest.json to repeat. A spec's `fields:` says how to read fine-tuning records.
        text_field: The field holding each row's text.
        id_field: The field holding each row's id (a content hash where absent).
        keep_fields: Extra fields to carry into the output.
        on_error: Bad rows: `raise` stops with file:line, `skip` skips and counts them.
        overwrite: Replace an existing output folder.
        rows_per_shard: Rows per output Parquet file.
        runner: Where the steps run: `local` (this process; the maps on a thread beside the
            reader) or `dask` (a Dask cluster: the maps on its workers, the dedup reduces
            distributed, as `datadiet curate --executor dask`). Same output either way.
        dask_address: Dask scheduler address (tcp://host:8786); empty = start a local cluster
            of `workers` processes on 127.0.0.1 for the run.
        workers: Worker processes of that local Dask cluster (the local runner ignores it).
        worker_memory: Memory limit per worker of that local cluster, e.g. `400MiB`; `auto`
            shares out the machine's memory. Partitions are sized to it.
        shards: Deprecated, ignored: the Dask runner sizes its partitions to the workers'
            memory. Kept so that saved deployments that pass it still run.
        tokenizer: Tokenizer counting the report's tokens: a folder or id; empty = SmolLM2's;
            `bytes` = UTF-8 bytes.
        report_model: Model preset whose training FLOPs (one epoch) the report quotes.
        context: Context length for the FLOPs of the report.
        storage: Folder for the task cache; empty = $DATADIET_FLOW_STORAGE or
            ~/.cache/datadiet/flows.
    """
    params = CurateParams.of_call(curate.fn, locals())
    logger = get_run_logger()
    if params.shards:
        logger.warning("shards=%d is ignored: the Dask runner sizes its partitions to the "
                       "workers' memory (the parameter will be removed)", params.shards)
    key = series_key("curate", params.source)
    spec_entries, fields = normalised_spec(params.spec), spec_fields(params.spec)
    fingerprint = source_fingerprint(params.source)
    progress = create_progress_artifact(0.0, key=f"{key}-progress", description=(
        "Curation: the read (with the steps' maps), each step's reduce, then the token counts"))

    def output_intact(result: dict) -> bool:
        manifest = Path(result["manifest"])
        return manifest.exists() and Manifest.load(manifest).output.get(
            "fingerprint") == result["output_fingerprint"]

    summary = run_checked(
        stored(curate_corpus, params), output_intact, source=params.source,
        fingerprint=fingerprint, spec=spec_entries, fields=fields, out=str(params.out),
        text_field=params.text_field, id_field=params.id_field,
        keep_fields=list(params.keep_fields or []), on_error=params.on_error,
        overwrite=params.overwrite, rows_per_shard=params.rows_per_shard,
        engine=params.scale.model_dump(), progress_id=str(progress))
    manifest = Manifest.load(summary["manifest"])
    logger.info("%s", kept_line(manifest, summary["rows_in"], summary["rows_out"]))
    update_progress_artifact(progress, progress=CURATED)
    counter = stored(count_tokens, params)
    before = counter(data=params.source, fingerprint=fingerprint, text_field=params.text_field,
                     tokenizer=params.tokenizer, fields=fields)
    after = counter(data=summary["out"], fingerprint=summary["output_fingerprint"],
                    text_field=params.text_field, tokenizer=params.tokenizer, fields=fields)
    logger.info("tokens %s -> %s (%s)", f"{before['tokens']:,}", f"{after['tokens']:,}",
                params.tokenizer or "SmolLM2 tokenizer")
    publish_curate_report(params, summary, before, after, key)
    update_progress_artifact(progress, progress=100.0)
    # `shards`: the output's Parquet data files (before the one engine: the input's shards)
    return {**summary, "tokens_in": before["tokens"], "tokens_out": after["tokens"],
            "shards": len(manifest.output.get("shards", []))}


def kept_line(manifest: Manifest, rows_in: int, rows_out: int) -> str:
    """``kept 270 of 421 rows; exact_dedup 49, minhash_dedup 20, quality 82``: the run's log."""
    removed = ", ".join(f"{step.name} {sum(step.removed.values()):,}" for step in manifest.steps)
    return f"kept {rows_out:,} of {rows_in:,} rows; removed by {removed or 'no step'}"


def training_flops(model: str, tokens: int, context: int) -> float:
    """Analytic FLOPs of one training epoch over ``tokens`` (the ledger's formula)."""
    return LlamaConfig.preset(model).shape().flops(tokens, context, training=True)


def publish_curate_report(params: CurateParams, summary: dict, before: dict, after: dict,
                          key: str) -> dict:
    """Markdown summary, before/after table and a rows-per-step plot, as artifacts."""
    manifest = Manifest.load(summary["manifest"])
    curation_flops = float(sum(s.flops for s in manifest.steps))
    measures = {
        "rows": (before["rows"], after["rows"]),
        "tokens": (before["tokens"], after["tokens"]),
        f"train FLOPs (1 epoch, {params.report_model})": (
            training_flops(params.report_model, before["tokens"], params.context),
            training_flops(params.report_model, after["tokens"], params.context) + curation_flops),
    }
    table = before_after_rows(measures)
    step_rows = [{"step": s.name, "rows in": s.rows_in, "rows out": s.rows_out,
                  "seconds": s.seconds,
                  "removed (by reason)": ", ".join(f"{k}={v}" for k, v in s.removed.items()) or "-"}
                 for s in manifest.steps]
    plot = bar_plot(["input", *[s.name for s in manifest.steps]],
                    {"rows": [before["rows"], *[s.rows_out for s in manifest.steps]]},
                    "Rows left after each step", "rows",
                    Path(summary["out"]) / "report" / "rows_per_step.png")
    kept = 100.0 * after["rows"] / before["rows"] if before["rows"] else 0.0
    sections = [
        f"**Source** `{params.source}` → **output** `{summary['out']}`  \n"
        f"Kept **{after['rows']:,} of {before['rows']:,} rows ({kept:.1f}%)**, "
        f"{after['tokens']:,} of {before['tokens']:,} tokens. "
        f"Ran on {params.scale.describe()}.",
        "## Before and after\n\n" + markdown_table(table),
        "## Steps\n\n" + markdown_table(step_rows),
        image_section("Rows left after each step", plot),
    ]
    publish(key, f"Curation report: {Path(summary['out']).name}", sections, table,
            "Rows, tokens and training FLOPs before and after curation")
    return {"table": table}


__all__ = ["CurateParams", "ScaleOut", "curate", "kept_line", "normalised_spec", "spec_fields",
           "training_flops"]

