"""One plan, two executors: the in-process run and a real Dask ``LocalCluster`` (2 worker
processes on 127.0.0.1) must keep exactly the same rows, for the same reasons, with the same
per-step stats; and the Dask run must finish under a worker memory budget smaller than the
signatures a single-process reduce would hold."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

distributed = pytest.importorskip("distributed")

from datadiet.pipeline.curate import (  # noqa: E402
    curate,
    curate_path,
    load_spec,
    load_spec_fields,
)
from datadiet.pipeline.executors.dask import DaskExecutor  # noqa: E402
from datadiet.pipeline.io import MANIFEST_FILE, iter_jsonl  # noqa: E402

#: The pre-training specs of the README (and the variants that change the reduce's shape).
SPECS = {
    "exact": [{"exact_dedup": {}}],
    "exact-raw": [{"exact_dedup": {"normalize": False}}],
    "minhash": [{"minhash_dedup": {"threshold": 0.8, "num_perm": 128, "ngram": 5}}],
    "minhash-unverified": [{"minhash_dedup": {"threshold": 0.7, "verify": False}}],
    # one band, two workers: the band's buckets split by key range over both
    "minhash-one-band": [{"minhash_dedup": {"threshold": 0.8, "bands": 1, "rows": 6}}],
    "quality": [{"quality": {"min_words": 50}}],
    "readme": [{"exact_dedup": {}}, {"minhash_dedup": {"threshold": 0.8, "num_perm": 128,
                                                       "ngram": 5}},
               {"quality": {"min_words": 50}}],
    "quality-first": [{"quality": {}}, {"minhash_dedup": {}}, {"exact_dedup": {}}],
}


def _t0_corpus(shared_data: Path, n: int, path: Path) -> int:
    """T0 prompts as ``{id, text}`` JSONL, plus planted exact copies, near copies (an edited
    tail) and stubs; returns the number of rows."""
    rows = []
    for source in sorted((shared_data / "sft" / "t0_train").glob("*.jsonl")):
        with open(source, encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                record = json.loads(line)
                rows.append({"id": f"{source.stem}-{i}",
                             "text": record["prompt"] + record["completion"]})
                if len(rows) == n:
                    break
        if len(rows) == n:
            break
    rows += [dict(r, id=f"copy-{r['id']}", text=r["text"].upper()) for r in rows[:150]]
    rows += [dict(r, id=f"near-{r['id']}", text=r["text"] + " (see above)")
             for r in rows[150:300]]
    rows += [dict(r, id=f"raw-copy-{r['id']}") for r in rows[300:350]]
    rows += [{"id": f"stub-{i}", "text": "click here"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "t0.jsonl"
    _t0_corpus(shared_data, 2500, path)
    return path


@pytest.fixture(scope="module")
def dask_executor() -> Iterator[DaskExecutor]:
    # Small partitions, so every reduce crosses partitions and workers.
    with DaskExecutor(workers=2, partition_rows=400) as executor:
        yield executor


def _assert_same_run(local, other, local_out: Path, other_out: Path) -> None:  # noqa: ANN001
    assert np.array_equal(local.kept_rows, other.kept_rows)
    assert local.removed.equals(other.removed)
    for a, b in zip(local.manifest.steps, other.manifest.steps, strict=True):
        assert (a.name, a.rows_in, a.rows_out, a.removed, a.stats) == \
            (b.name, b.rows_in, b.rows_out, b.removed, b.stats)
    assert local.manifest.output["fingerprint"] == other.manifest.output["fingerprint"]
    for name in local.manifest.output["shards"]:
        assert pq.read_table(local_out / name).equals(pq.read_table(other_out / name))


@pytest.mark.parametrize("spec", list(SPECS), ids=list(SPECS))
def test_every_pretraining_spec_keeps_the_same_rows_on_dask(
        spec: str, corpus: Path, dask_executor: DaskExecutor, tmp_path: Path) -> None:
    steps = SPECS[spec]
    local = curate_path(corpus, steps, tmp_path / "local", show_progress=False)
    on_dask = curate_path(corpus, steps, tmp_path / "dask", show_progress=False,
                          executor=dask_executor)
    assert 0 < local.rows_kept < local.manifest.input["rows"]  # the spec removed something
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")


def test_reduces_return_only_small_results_to_the_driver(
        corpus: Path, dask_executor: DaskExecutor, tmp_path: Path, monkeypatch) -> None:
    """The driver never gathers features: what comes back (labels of copies, verified edges,
    counts) is far smaller than the signatures, which stay on the workers."""
    gathered: list[int] = []
    client = dask_executor.client
    original = client.gather

    def recording(futures, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = original(futures, *args, **kwargs)
        gathered.append(_nbytes(result))
        return result

    monkeypatch.setattr(client, "gather", recording)
    result = curate_path(corpus, SPECS["minhash"], tmp_path / "out", show_progress=False,
                         executor=dask_executor)
    signature_bytes = result.manifest.input["rows"] * 128 * 4
    step = result.manifest.steps[0]
    removed, verified_pairs = step.rows_in - step.rows_out, step.stats["merged_pairs"]
    assert verified_pairs > 3 * removed > 300  # T0's near copies come in clusters
    # a spanning forest of the verified pairs (two int64 per edge, about one edge per removed
    # row) and a few counts; no signature, nothing per row
    assert 0 < sum(gathered) <= 16 * 2 * removed + 1024 < signature_bytes / 5


def test_small_bucket_shares_and_partitions_keep_the_same_rows(
        corpus: Path, dask_executor: DaskExecutor, tmp_path: Path, monkeypatch) -> None:
    """Workers with little memory get small MinHash bucket owners (each band's keys split by
    hash range over many shares, dealt over the workers) and partitions cut by text bytes,
    with at most a few partitions per worker waiting for their maps: the rows kept are the
    same, and the driver never ran far ahead of the workers."""
    import datadiet.pipeline.executors.dask as dask_executors

    shares: list[tuple[int, int]] = []  # (rows, bands) and the shares they got
    original = dask_executors._bucket_shares

    def recording(rows: int, bands: int, workers: int, share_keys: int) -> int:
        shares.append(((rows, bands), original(rows, bands, workers, share_keys)))
        return shares[-1][1]

    waits: list[int] = []
    original_wait = dask_executors.wait

    def recording_wait(futures, **kwargs):  # noqa: ANN001, ANN003, ANN202
        waits.append(len(futures))
        return original_wait(futures, **kwargs)

    monkeypatch.setattr(dask_executors, "SHARE_KEYS", (512, 512))
    monkeypatch.setattr(dask_executors, "MIN_PARTITION_BYTES", 64 << 10)
    monkeypatch.setattr(dask_executors, "MAX_PARTITION_BYTES", 64 << 10)
    monkeypatch.setattr(dask_executors, "_bucket_shares", recording)
    monkeypatch.setattr(dask_executors, "wait", recording_wait)
    # no partition may wait for its maps while the next is read: the driver waits each time
    monkeypatch.setattr(dask_executors, "PARTITIONS_IN_FLIGHT", 0)
    steps = SPECS["readme"]
    local = curate_path(corpus, steps, tmp_path / "local", show_progress=False)
    on_dask = curate_path(corpus, steps, tmp_path / "dask", show_progress=False,
                          executor=dask_executor)
    [((rows, bands), got)] = shares
    assert rows == on_dask.manifest.steps[1].rows_in  # MinHash's live rows
    assert got == bands * -(-rows // 512) > 4 * bands  # each band over several key ranges
    # two read-time maps (exact, MinHash) pending at most: the partition just scattered
    assert len(waits) >= 3 and max(waits) <= 2
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")


def _model_spec_on_both(source: Path, spec: list, tmp_path: Path, dask_executor: DaskExecutor,
                        partition_rows: int) -> tuple:
    """A model spec run on Dask (small partitions, the module's cluster) and in-process: every
    step removed something, and both kept the same rows for the same reasons."""
    executor = DaskExecutor(client=dask_executor.client, partition_rows=partition_rows)
    on_dask = curate_path(source, spec, tmp_path / "dask", show_progress=False,
                          executor=executor)
    local = curate_path(source, spec, tmp_path / "local", show_progress=False)
    assert all(step.rows_out < step.rows_in for step in local.manifest.steps)
    assert np.array_equal(local.kept_rows, on_dask.kept_rows)
    columns = ["id", "input_row", "step", "reason"]
    assert local.removed.select(columns).equals(on_dask.removed.select(columns))
    return local, on_dask


def _nbytes(value: object) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 8


def test_a_memory_limited_cluster_spills_and_keeps_the_same_rows(
        tmp_path: Path, shared_data: Path) -> None:
    """Workers whose memory budget for data is a fifth of the signatures a single-process
    reduce gathers (Dask spills features past it to disk): the run finishes, it did spill,
    and the kept rows equal the in-process run's."""
    import dask

    source = tmp_path / "t0.jsonl"
    rows = _t0_corpus(shared_data, 6000, source)
    spec = SPECS["readme"]
    local = curate_path(source, spec, tmp_path / "local", show_progress=False)
    signatures = rows * 128 * 4  # what gathering the MinHash signatures in one process costs
    # Dask's budget for a worker's data is a fraction ("target") of its memory limit; past it
    # the worker spills to disk. The process limit itself (pause, restart) is left out: an
    # idle worker's own footprint differs between machines, and this test is about the data.
    limit = 1 << 30
    target = signatures / 5 / limit  # data held in memory before spilling: 1/5 of the above
    with dask.config.set({"distributed.worker.memory.target": target,
                          "distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": False,
                          "distributed.worker.memory.terminate": False}), \
            DaskExecutor(workers=2, memory_limit=limit, partition_rows=500) as executor:
        on_dask = curate_path(source, spec, tmp_path / "dask", show_progress=False,
                              executor=executor)
        spilled = executor.client.run(_spilled_bytes)
    assert sum(spilled.values()) > 0
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")


def _spilled_bytes(dask_worker) -> int:  # noqa: ANN001 - Dask passes its Worker
    return int(dask_worker.data.cumulative_metrics["disk-write", "bytes"])


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture()
def small_partitions(dask_executor: DaskExecutor) -> DaskExecutor:
    """The module's cluster, cut into 10-row partitions: the example files have 12-47 rows."""
    return DaskExecutor(client=dask_executor.client, partition_rows=10)


@pytest.mark.parametrize("example", [("sft.yaml", "sft.jsonl"), ("chat-spec.yaml", "chat.jsonl")],
                         ids=["sft", "chat"])
def test_the_readme_fine_tuning_specs_keep_the_same_rows_on_dask(
        example: tuple[str, str], small_partitions: DaskExecutor, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's fine-tuning spec (exact dedup, decontamination against an eval set read
    with the spec's fields, response rules, MinHash) and the chat spec, as the command reads
    them, on both executors: same rows, reasons, stats, and output files."""
    spec, data = example
    monkeypatch.chdir(EXAMPLES)  # the spec names its eval set relative to the examples
    steps, fields = load_spec(spec), load_spec_fields(spec) or "auto"
    local = curate_path(data, steps, tmp_path / "local", show_progress=False, fields=fields)
    on_dask = curate_path(data, steps, tmp_path / "dask", show_progress=False, fields=fields,
                          executor=small_partitions)
    assert local.kept_rows is not None and on_dask.kept_rows is not None  # both streamed
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")
    if spec == "sft.yaml":  # each step before MinHash removed something: decisions compared
        assert all(step.rows_out < step.rows_in for step in local.manifest.steps[:3])
        assert "contaminated-by:sft_eval.jsonl" in set(local.removed.column("reason").to_pylist())
    kept = pq.read_table(tmp_path / "dask" / local.manifest.output["shards"][0])
    assert ("question" if spec == "sft.yaml" else "messages") in kept.column_names


def _t0_records(shared_data: Path, n: int, path: Path) -> None:
    """T0 prompt/completion records with planted faults: copies, echoed prompts, cut-off
    answers."""
    rows = []
    for source in sorted((shared_data / "sft" / "t0_train").glob("*.jsonl"))[::7]:
        with open(source, encoding="utf-8") as handle:
            for i, line in zip(range(n // 10), handle, strict=False):
                record = json.loads(line)
                rows.append({"id": f"{source.stem}-{i}", "prompt": record["prompt"],
                             "completion": record["completion"]})
    rows = rows[:n]
    rows += [dict(r, id=f"copy-{r['id']}") for r in rows[:20]]
    rows += [dict(r, id=f"echo-{r['id']}", completion=r["prompt"]) for r in rows[20:40]]
    rows += [dict(r, id=f"cut-{r['id']}", completion=" ".join(r["prompt"].split()[:20]) + " and")
             for r in rows[40:60]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("spec", [
    [{"response_rules": {}}, {"longest": {"keep": 0.5}}, {"random": {"keep": 0.8, "seed": 3}}],
    [{"random": {"keep": 0.9}}, {"decontaminate": {"eval_sets": ["EVAL"], "n": 8}},
     {"exact_dedup": {}}, {"response_rules": {"checks": ["truncated", "restates"]}}],
], ids=["rules-longest-random", "random-first"])
def test_record_steps_keep_the_same_rows_on_dask(
        spec: list, shared_data: Path, dask_executor: DaskExecutor, tmp_path: Path) -> None:
    """Steps whose maps read a fine-tuning row's turns (response rules, longest) and the
    draws and decontamination, in any order, on 600 real T0 records in 50-row partitions."""
    source = tmp_path / "t0-sft.jsonl"
    _t0_records(shared_data, 600, source)
    evals = tmp_path / "eval.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()
    evals.write_text("\n".join(lines[100:110]) + "\n", encoding="utf-8")  # a leak
    spec = json.loads(json.dumps(spec).replace('"EVAL"', json.dumps(str(evals))))
    executor = DaskExecutor(client=dask_executor.client, partition_rows=50)
    local = curate_path(source, spec, tmp_path / "local", show_progress=False)
    on_dask = curate_path(source, spec, tmp_path / "dask", show_progress=False,
                          executor=executor)
    assert all(step.rows_out < step.rows_in for step in local.manifest.steps)
    _assert_same_run(local, on_dask, tmp_path / "local", tmp_path / "dask")
    # the streamed run decides what the Python API decides on a Dataset
    in_memory = curate(list(iter_jsonl(source)), spec)
    assert in_memory.removed.select(["id", "step", "reason"]).equals(
        local.removed.select(["id", "step", "reason"]))


@pytest.mark.slow
def test_model_steps_keep_the_same_rows_on_dask(
        shared_data: Path, dask_executor: DaskExecutor, tmp_path: Path) -> None:
    """Perplexity (SmolLM2), semantic dedup and k-center (MiniLM) as maps on the workers
    (each worker loads each model once) and reduces in the driver, on 48 real T0 rows in
    12-row partitions: the same rows and reasons as in-process, scores within float noise,
    and the workers' model work booked in the run's ledger."""
    source = tmp_path / "t0.jsonl"
    rows = [json.loads(line) for line in open(sorted(
        (shared_data / "sft" / "t0_train").glob("*.jsonl"))[0], encoding="utf-8")][:40]
    run = uuid.uuid4().hex[:8]  # texts no earlier run embedded: the workers compute them
    docs = [{"id": f"t0-{i}", "text": f"{r['prompt']}{r['completion']} ({run})"}
            for i, r in enumerate(rows)]
    docs += [dict(d, id=f"reworded-{d['id']}", text=d["text"].replace(".", " .")) for d in docs[:8]]
    source.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    spec = [{"perplexity": {"keep": 0.9, "max_tokens": 64}}, {"semantic_dedup": {}},
            {"kcenter": {"keep": 0.7}}]
    local, on_dask = _model_spec_on_both(source, spec, tmp_path, dask_executor, 12)
    for column in ("perplexity_score", "semantic_dedup_score", "kcenter_score"):
        a = np.asarray(local.removed.column(column).to_numpy(zero_copy_only=False))
        b = np.asarray(on_dask.removed.column(column).to_numpy(zero_copy_only=False))
        assert np.allclose(a, b, rtol=1e-4, equal_nan=True), column
    for a, b in zip(local.manifest.steps, on_dask.manifest.steps, strict=True):
        assert (a.rows_in, a.rows_out, a.removed) == (b.rows_in, b.rows_out, b.removed)
    perplexity, embedding = on_dask.manifest.steps[0], on_dask.manifest.steps[1:]
    # the LM work done on the workers is booked on the step, as in-process
    assert perplexity.tokens_scored == perplexity.stats["tokens_scored"] \
        == local.manifest.steps[0].tokens_scored > 40 * 20
    assert perplexity.flops == pytest.approx(local.manifest.steps[0].flops, rel=1e-9)
    # the workers embedded the new texts once (the first of the two steps' maps to run on a
    # partition did; the other found them in the cache) and booked it; the in-process run
    # then found every text in the machine's embedding cache, which all processes share
    assert sum(step.tokens_scored for step in embedding) > 40 * 20
    assert sum(step.tokens_scored for step in local.manifest.steps[1:]) == 0
    stages = {s["name"] for s in on_dask.manifest.ledger["stages"]}
    assert {"step:perplexity/lm-scoring", "step:semantic_dedup/embedding",
            "model-loading"} <= stages


@pytest.mark.slow
def test_fine_tuning_model_steps_keep_the_same_rows_on_dask(
        shared_data: Path, dask_executor: DaskExecutor, tmp_path: Path) -> None:
    """IFD (SmolLM2 on each row's turns, on the workers) then DEITA, whose reduce reads the
    IFD scores the runner kept for it and embeds on the workers; after an exact dedup, so both
    model maps run on the survivors only."""
    source = tmp_path / "t0-sft.jsonl"
    _t0_records(shared_data, 30, source)
    spec = [{"exact_dedup": {}}, {"ifd": {"keep": 0.8, "max_length": 96, "cache": False}},
            {"deita": {"keep": 0.5, "threshold": 0.95}}]
    local, on_dask = _model_spec_on_both(source, spec, tmp_path, dask_executor, 16)
    ifd_local, ifd_dask = local.manifest.steps[1], on_dask.manifest.steps[1]
    assert ifd_local.stats["rows_scored"] == ifd_dask.stats["rows_scored"] \
        == ifd_local.rows_in  # the survivors of the exact dedup, no more
    assert ifd_local.stats["model"] == ifd_dask.stats["model"]
    assert ifd_dask.tokens_scored == ifd_local.tokens_scored > 0
    assert np.allclose(local.removed.column("ifd_score").to_numpy(zero_copy_only=False),
                       on_dask.removed.column("ifd_score").to_numpy(zero_copy_only=False),
                       rtol=1e-4, equal_nan=True)


def test_the_command_runs_on_a_local_dask_cluster(corpus: Path, tmp_path: Path) -> None:
    """``datadiet curate --executor dask`` writes what the in-process command writes."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n- minhash_dedup: {threshold: 0.8}\n", encoding="utf-8")
    outs = {}
    for executor in ("local", "dask"):
        out = tmp_path / executor
        subprocess.run([sys.executable, "-m", "datadiet", "curate", str(corpus), "--spec",
                        str(spec), "--out", str(out), "--quiet", "--executor", executor,
                        "--workers", "2"], check=True, capture_output=True)
        outs[executor] = json.loads((out / MANIFEST_FILE).read_text())
    assert outs["local"]["output"] == outs["dask"]["output"]
    assert outs["local"]["output"]["rows"] < outs["local"]["input"]["rows"]
    # DSIR (a global pass: its raw-data distribution is fitted over every partition) runs on
    # Dask too, and writes what the in-process command writes
    target = tmp_path / "target.jsonl"
    target.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(True)[:200]),
                      encoding="utf-8")
    spec.write_text(f"- exact_dedup: {{}}\n- dsir: {{target: {target}, keep: 0.2}}\n",
                    encoding="utf-8")
    for executor in ("local", "dask"):
        out = tmp_path / f"dsir-{executor}"
        subprocess.run([sys.executable, "-m", "datadiet", "curate", str(corpus), "--spec",
                        str(spec), "--out", str(out), "--quiet", "--executor", executor,
                        "--workers", "2"], check=True, capture_output=True)
        outs[executor] = json.loads((out / MANIFEST_FILE).read_text())
    assert outs["local"]["output"] == outs["dask"]["output"]
    assert outs["local"]["steps"][1]["stats"] == outs["dask"]["steps"][1]["stats"]
