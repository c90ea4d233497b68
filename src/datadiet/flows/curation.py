"""The ``curate`` flow: a spec and a corpus in, the curated dataset and its manifest out.

Single process, it is one cached task around :func:`datadiet.pipeline.curate.curate_path`. Scaled
out, the per-shard work runs in parallel on a Dask cluster, ahead of the run, for every shard:
steps whose decision for a row reads that row alone (``Step.row_local``: the quality rules) are
decided there, and steps that split into a per-row map and a global reduce
(``Step.row_features``: exact-dedup hashes, MinHash signatures and band keys) compute their
features there. Then the library's own runner applies the spec in order: the decided steps
answer from the shard decisions, the split steps run only their reduce (grouping hashes, LSH and
union-find) on the rows still alive, other steps run whole. Because the runner, the order and
the rows are the same, the kept ids and the reason of every removed row are exactly those of the
single-process run — by construction, not by re-implementing any step here.

Caching: the input is named by the fingerprint of its bytes, the spec by the hash of its
normalised form (every parameter filled in), so an unchanged rerun runs no task at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datadiet.flows.common import (
    FlowParams,
    all_exist,
    cached_task,
    flow_run_namer,
    run_checked,
    series_key,
    stable_hash,
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
from datadiet.flows.shards import (
    PrecomputedFeatures,
    PrecomputedStep,
    decide_shard,
    input_rows,
    read_decisions,
    read_features,
    shard_features,
    write_shards,
)
from datadiet.kernels.model import LlamaConfig
from datadiet.pipeline.curate import curate_path, parse_spec, spec_of
from datadiet.pipeline.io import MANIFEST_FILE, source_fingerprint
from datadiet.pipeline.manifest import Manifest
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.pipeline.stages.training import load_text_dataset
from datadiet.pipeline.steps import Step, build_step

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


class ScaleOut(BaseModel):
    """Where the per-shard work runs (the flow's ``runner``, ``dask_address``, ``workers`` and
    ``shards`` parameters)."""

    model_config = ConfigDict(extra="forbid")

    runner: RunnerKind = "local"
    address: str | None = None
    workers: Workers = 2
    shards: Shards = 0

    def n_shards(self) -> int:
        if self.shards:
            return self.shards
        return self.workers if self.runner == "dask" else 1

    def task_runner(self) -> Any:
        if self.runner == "local":
            return ThreadPoolTaskRunner(max_workers=self.workers)
        from prefect_dask import DaskTaskRunner

        if self.address:
            return DaskTaskRunner(address=self.address)
        # Workers report task states to the flow's API. Without PREFECT_API_URL that is the
        # flow process's temporary server, which each worker would otherwise replace with one of
        # its own (recording nothing the user sees), so they are pointed at it.
        from prefect.client.orchestration import get_client

        api_url = str(get_client(sync_client=True).api_url).rstrip("/")
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": self.workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None, "env": {"PREFECT_API_URL": api_url},
            "silence_logs": logging.ERROR,
        })


def normalised_spec(spec: str) -> list[dict[str, dict[str, Any]]]:
    """The spec as ``[{step: params}]`` with every parameter filled in; errors name the entry.

    ``spec`` is a path to a YAML spec or a ``manifest.json`` (to repeat a run), or the YAML
    itself. Building every step here is what validates the whole spec before any task runs.
    """
    path = Path(spec).expanduser()
    source = str(path) if "\n" not in spec and path.is_file() else "spec"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8") if source != "spec" else spec)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    steps = []
    for i, (name, params) in enumerate(parse_spec(data, source), start=1):
        try:
            steps.append(build_step(name, params))
        except ValueError as exc:
            raise ValueError(f"{source}: entry {i}: {exc}") from exc
    return spec_of(steps)


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
        if Path(self.out).expanduser().resolve() == Path(self.source).expanduser().resolve():
            raise ValueError("out: the output must not replace its own input")
        return self

    @property
    def scale(self) -> ScaleOut:
        return ScaleOut(runner=self.runner, address=self.dask_address, workers=self.workers,
                        shards=self.shards)


@cached_task(task_run_name=task_run_namer("curate {source} → {out}/"))
def curate_corpus(source: str, fingerprint: str, spec: list, out: str, text_field: str,
                  id_field: str, keep_fields: list, on_error: str, overwrite: bool,
                  rows_per_shard: int, sharded: dict) -> dict:
    """The library's runner over the whole spec; ``sharded`` holds the per-shard results
    (``shards``; ``decisions`` and ``features`` by spec index) that answer the sharded steps."""
    decisions, features = sharded.get("decisions", {}), sharded.get("features", {})
    row_of = input_rows(sharded["shards"], id_field) if features else {}
    steps: list[Step] = []
    for index, entry in enumerate(spec):
        (name, params), = entry.items()
        step = build_step(name, params)
        if str(index) in decisions:
            step = PrecomputedStep(step, read_decisions(decisions[str(index)]))
        elif str(index) in features:
            step = PrecomputedFeatures(step, read_features(features[str(index)]), row_of)
        steps.append(step)
    result = curate_path(source, steps, out, text_field=text_field, id_field=id_field,
                         keep_fields=keep_fields, on_error=on_error, overwrite=overwrite,
                         rows_per_shard=rows_per_shard, show_progress=False)
    manifest_path = Path(out) / MANIFEST_FILE
    return {"out": str(out), "manifest": str(manifest_path), "rows_in": result.manifest.input["rows"],
            "rows_out": len(result.dataset), "output_fingerprint": result.manifest.output["fingerprint"]}


@cached_task(task_run_name=task_run_namer("count tokens of {data}"))
def count_tokens(data: str, fingerprint: str, text_field: str, tokenizer: str | None) -> dict:
    """Rows and tokens (each row plus one end-of-text token, as training packs them)."""
    ds = load_text_dataset(data, text_field)
    tok = load_tokenizer(tokenizer)
    tokens = 0
    for start in range(0, len(ds), 1000):
        texts = [t or "" for t in ds[start : start + 1000][text_field]]
        tokens += sum(len(ids) + 1 for ids in tok(texts, add_special_tokens=False)["input_ids"])
    return {"rows": len(ds), "tokens": tokens}


@flow(name="datadiet-curate-shards", flow_run_name="map over shards", log_prints=False)
def map_over_shards(params: CurateParams, spec: list, fingerprint: str,
                    progress_id: str | None = None, progress_to: float = 100.0) -> dict:
    """Split the corpus; on every shard, decide the row-local steps and compute the per-row
    features of the map/reduce steps, in parallel.

    Runs with the task runner the parameters choose (a subflow, so the parent's form can pick
    it); the parent run's progress artifact (``progress_id``) moves from 0 to ``progress_to`` as
    shard tasks finish.
    """
    n_shards = params.scale.n_shards()
    work = params.storage_path() / "work" / fingerprint[:32] / f"{n_shards}-shards"
    shards = run_checked(stored(write_shards, params), all_exist, source=params.source,
                         fingerprint=fingerprint, text_field=params.text_field,
                         id_field=params.id_field, on_error=params.on_error, n_shards=n_shards,
                         folder=str(work))
    decide, featurize = stored(decide_shard, params), stored(shard_features, params)
    futures = {}
    for i, entry in enumerate(spec):
        (name, step_params), = entry.items()
        step = build_step(name, step_params)
        # the shards hold the text alone: a map of records (turns, models) runs in the reduce
        if not step.row_local and type(step).row_features is Step.row_features:
            continue
        kind = "decisions" if step.row_local else "features"
        step_dir = work / f"step-{i}-{stable_hash(entry)[:16]}"
        for k, shard in enumerate(shards):
            common = dict(step_name=name, step_params=step_params, shard_path=shard,
                          fingerprint=f"{fingerprint}:{k}/{n_shards}", text_field=params.text_field)
            if kind == "decisions":
                task_, kwargs = decide, dict(common, id_field=params.id_field,
                                             out_path=str(step_dir / f"decisions-{k:05d}.parquet"))
            else:
                task_, kwargs = featurize, dict(common, out_path=str(step_dir / f"features-{k:05d}.npz"))
            futures[task_.submit(**kwargs)] = (kind, i, k, task_, kwargs)
    get_run_logger().info("%d shards, %d shard tasks on the %s runner", len(shards),
                          len(futures), params.runner)
    results: dict = {"shards": shards, "decisions": {}, "features": {}}
    for done, future in enumerate(as_completed(list(futures)), start=1):
        kind, i, k, task_, kwargs = futures[future]
        result = future.result()
        if not Path(result["path"]).exists():  # a cache hit whose file was deleted since
            result = task_.with_options(refresh_cache=True)(**kwargs)
        results[kind].setdefault(str(i), [""] * len(shards))[k] = result["path"]
        if progress_id:
            update_progress_artifact(progress_id, progress=progress_to * done / len(futures))
    return results


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
            manifest.json to repeat.
        text_field: The field holding each row's text.
        id_field: The field holding each row's id (a content hash where absent).
        keep_fields: Extra fields to carry into the output.
        on_error: Bad rows: `raise` stops with file:line, `skip` skips and counts them.
        overwrite: Replace an existing output folder.
        rows_per_shard: Rows per output Parquet file.
        runner: Where per-shard work runs: `local` (threads in this process) or `dask`
            (prefect-dask's DaskTaskRunner).
        dask_address: Dask scheduler address (tcp://host:8786); empty = start a local cluster of
            `workers` processes on this machine.
        workers: Workers of the local Dask cluster (threads for the local runner).
        shards: Shards to split the corpus into; 0 = one per worker with dask, none with local.
        tokenizer: Tokenizer counting the report's tokens: a folder or id; empty = SmolLM2's;
            `bytes` = UTF-8 bytes.
        report_model: Model preset whose training FLOPs (one epoch) the report quotes.
        context: Context length for the FLOPs of the report.
        storage: Folder for the task cache and the work files of sharded runs; empty =
            $DATADIET_FLOW_STORAGE or ~/.cache/datadiet/flows.
    """
    params = CurateParams.of_call(curate.fn, locals())
    logger = get_run_logger()
    key = series_key("curate", params.source)
    spec_entries = normalised_spec(params.spec)
    fingerprint = source_fingerprint(params.source)
    progress = create_progress_artifact(0.0, key=f"{key}-progress", description=(
        "Curation: shard tasks, then the spec's reduces, then the token counts"))
    sharded: dict = {}
    if params.scale.n_shards() > 1:
        task_runner = params.scale.task_runner()
        sharded = map_over_shards.with_options(task_runner=task_runner)(
            params=params, spec=spec_entries, fingerprint=fingerprint,
            progress_id=str(progress), progress_to=60.0)

    def output_intact(result: dict) -> bool:
        manifest = Path(result["manifest"])
        return manifest.exists() and Manifest.load(manifest).output.get(
            "fingerprint") == result["output_fingerprint"]

    summary = run_checked(
        stored(curate_corpus, params), output_intact, source=params.source,
        fingerprint=fingerprint, spec=spec_entries, out=str(params.out),
        text_field=params.text_field, id_field=params.id_field,
        keep_fields=list(params.keep_fields or []), on_error=params.on_error,
        overwrite=params.overwrite, rows_per_shard=params.rows_per_shard, sharded=sharded)
    manifest = Manifest.load(summary["manifest"])
    logger.info("%s", kept_line(manifest, summary["rows_in"], summary["rows_out"]))
    update_progress_artifact(progress, progress=80.0)
    counter = stored(count_tokens, params)
    before = counter(data=params.source, fingerprint=fingerprint, text_field=params.text_field,
                     tokenizer=params.tokenizer)
    after = counter(data=summary["out"], fingerprint=summary["output_fingerprint"],
                    text_field=params.text_field, tokenizer=params.tokenizer)
    logger.info("tokens %s -> %s (%s)", f"{before['tokens']:,}", f"{after['tokens']:,}",
                params.tokenizer or "SmolLM2 tokenizer")
    publish_curate_report(params, summary, before, after, key)
    update_progress_artifact(progress, progress=100.0)
    return {**summary, "tokens_in": before["tokens"], "tokens_out": after["tokens"],
            "shards": params.scale.n_shards()}


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
        f"Shards: {params.scale.n_shards()} ({params.scale.runner}).",
        "## Before and after\n\n" + markdown_table(table),
        "## Steps\n\n" + markdown_table(step_rows),
        image_section("Rows left after each step", plot),
    ]
    publish(key, f"Curation report: {Path(summary['out']).name}", sections, table,
            "Rows, tokens and training FLOPs before and after curation")
    return {"table": table}


__all__ = ["CurateParams", "ScaleOut", "curate", "kept_line", "normalised_spec", "training_flops"]

