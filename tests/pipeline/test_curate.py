"""The curation runner and `datadiet curate`, end to end on real text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, load_dataset

from datadiet.cli import main
from datadiet.experiments.corpus import build_sample_corpus
from datadiet.pipeline.curate import curate, load_spec
from datadiet.pipeline.io import MANIFEST_FILE, REMOVED_FILE, read_removed
from datadiet.pipeline.manifest import Manifest
from datadiet.selectors.exact import ExactDedup
from datadiet.selectors.quality import QualityFilter

SPEC = "- exact_dedup: {}\n- minhash_dedup: {threshold: 0.7, num_perm: 64}\n- random: {keep: 0.9, seed: 3}\n"


@pytest.fixture()
def corpus(tmp_path: Path, shared_data: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    build_sample_corpus(path, n_base=80, shared_data=shared_data)
    return path


def test_python_api_composes_steps_and_explains_removals(wiki_paragraphs: list[str]) -> None:
    docs = wiki_paragraphs[:40]
    ds = Dataset.from_dict({"id": [f"d{i}" for i in range(43)],
                            "text": docs + [docs[0], docs[5], "too short"]})
    result = curate(ds, [ExactDedup(), QualityFilter(), {"random": {"keep": 30, "seed": 1}}])
    steps = result.manifest.steps
    assert [s.name for s in steps] == ["exact_dedup", "quality", "random"]
    assert steps[0].removed == {"exact-duplicate-of": 2}
    assert steps[0].rows_out == steps[1].rows_in == 41
    assert len(result.dataset) == 30 == steps[-1].rows_out
    assert result.why("d40") == "exact_dedup: exact-duplicate-of:d0"
    assert result.why("d42").startswith("quality: quality:")
    assert result.removed.num_rows == 43 - 30
    kept = set(result.dataset["id"])
    assert kept.isdisjoint(result.removed.column("id").to_pylist())


def test_cli_end_to_end_writes_loadable_output_and_manifest(tmp_path: Path, corpus: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    assert main(["curate", str(corpus), "--spec", str(spec), "--out", str(out), "--quiet"]) == 0
    ds = load_dataset("parquet", data_files=f"{out}/*.parquet", split="train")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["output"]["rows"] == len(ds)
    assert [list(s)[0] for s in manifest["spec"]] == ["exact_dedup", "minhash_dedup", "random"]
    step = manifest["steps"][0]
    assert set(step) >= {"name", "params", "rows_in", "rows_out", "removed", "seconds",
                         "tokens_scored", "flops"}
    n_in = manifest["input"]["rows"]
    removed = sum(sum(s["removed"].values()) for s in manifest["steps"])
    assert n_in - removed == len(ds)
    planted_exact = sum(1 for line in corpus.read_text().splitlines()
                        if json.loads(line)["planted"] == "exact")
    assert step["removed"]["exact-duplicate-of"] == planted_exact
    # the manifest repeats the run: same spec, same result
    out2 = tmp_path / "out2"
    assert main(["curate", str(corpus), "--spec", str(out / MANIFEST_FILE), "--out", str(out2),
                 "--quiet"]) == 0
    ds2 = load_dataset("parquet", data_files=f"{out2}/*.parquet", split="train")
    assert ds2["id"] == ds["id"]
    assert Manifest.load(out2 / MANIFEST_FILE).input["fingerprint"] == manifest["input"]["fingerprint"]


def test_cli_bad_input_fails_with_file_and_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine document"}\n{"text": oops}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n")
    out = tmp_path / "out"
    assert main(["curate", str(bad), "--spec", str(spec), "--out", str(out), "--quiet"]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
    assert not out.exists()
    assert main(["curate", str(bad), "--spec", str(spec), "--out", str(out), "--quiet",
                 "--on-error", "skip"]) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["input"]["skipped"]["count"] == 1
    assert manifest["input"]["skipped"]["examples"][0].startswith(f"{bad}:2:")


def test_bad_spec_names_the_entry(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n- minhash_dedupe: {}\n")
    with pytest.raises(ValueError, match=r"entry 2: unknown step 'minhash_dedupe'"):
        load_spec(spec)
    spec.write_text("- minhash_dedup: {thresh: 0.5}\n")
    with pytest.raises(ValueError, match=r"entry 1: bad parameters for step 'minhash_dedup'"):
        load_spec(spec)


def test_interrupted_run_leaves_no_output(tmp_path: Path, corpus: Path) -> None:
    """Kill the CLI mid-run: OUT must not exist (only a hidden temp folder may remain)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("- exact_dedup: {}\n")
    out = tmp_path / "out"
    code = (
        "import sys, datadiet.pipeline.io as io\n"
        "from datadiet.cli import main\n"
        "orig = io.write_batch_shards\n"
        "def boom(*a, **k):\n"
        "    orig(*a, **k)\n"
        "    raise KeyboardInterrupt\n"
        "import datadiet.pipeline.curate as c\n"
        "c.write_batch_shards = boom\n"
        f"sys.exit(main(['curate', {str(corpus)!r}, '--spec', {str(spec)!r}, '--out', {str(out)!r}, '--quiet']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def _t0_records(shared_data: Path, n: int) -> list[dict[str, str]]:
    rows = []
    for path in sorted((shared_data / "sft" / "t0_train").glob("*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                record = json.loads(line)
                rows.append({"id": f"{path.stem}-{i}", "text": record["prompt"] + record["completion"]})
                if len(rows) == n:
                    return rows
    return rows


def test_streamed_file_curate_equals_the_dataset_run_and_stays_lean(tmp_path: Path,
                                                                   shared_data: Path) -> None:
    """``datadiet curate`` on a file of map/reduce steps streams (maps while reading, on a
    second thread; kept rows read back into the output) and must give exactly what the
    in-memory ``Dataset`` runner gives on the same records: the same kept rows in the same
    order, the same removals and reasons. It must do so without importing ``datasets``,
    pandas or numba (their start-up would cost more than the work)."""
    records = _t0_records(shared_data, 3000)
    records += [dict(r, id=f"copy-{r['id']}") for r in records[:200]]  # exact copies
    records += [dict(r, id=f"near-{r['id']}", text=r["text"] + " (see above)")
                for r in records[200:400]]  # near copies
    src = tmp_path / "t0.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    spec_text = "- exact_dedup: {}\n- minhash_dedup: {threshold: 0.8}\n"
    (tmp_path / "spec.yaml").write_text(spec_text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "datadiet", "curate", str(src), "--spec",
         str(tmp_path / "spec.yaml"), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"datasets", "pandas", "numba", "torch"}
    streamed = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    removed = read_removed(out / REMOVED_FILE).to_pylist()

    in_memory = curate(Dataset.from_list(records), load_spec(tmp_path / "spec.yaml"))
    assert streamed["id"] == in_memory.dataset["id"]
    assert streamed["text"] == in_memory.dataset["text"]
    assert sorted((r["id"], r["step"], r["reason"]) for r in removed) == sorted(
        (r["id"], r["step"], r["reason"]) for r in in_memory.removed.to_pylist())
    reasons = {r["id"]: r["reason"] for r in removed}
    assert all(reasons.get(f"copy-{r['id']}", "").startswith("exact-duplicate-of")
               for r in records[:200])
    assert sum(reasons.get(f"near-{r['id']}", "").startswith("minhash-duplicate-of")
               for r in records[200:400]) >= 190
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["output"]["rows"] == len(streamed) == in_memory.manifest.output["rows"]


def test_streamed_features_spill_to_scratch_with_the_same_result(
        tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    """Past ``SPILL_BYTES`` a step's features go to memory-mapped scratch files (a big corpus
    must not need its signatures in RAM); the result is the same, and the scratch folder is
    gone afterwards.

    One file per feature however many batches spilled: with a file (and a memory map, which
    holds a descriptor) per batch, 5M documents ran out of file descriptors. The reader's
    blocks are made tiny here, so hundreds of batches spill under a descriptor limit a
    file-per-batch spill would pass."""
    import resource

    import datadiet.pipeline.executors.local as runner
    import datadiet.pipeline.io.reader as reader
    from datadiet.pipeline.curate import curate_path

    records = _t0_records(shared_data, 1500)
    records += [dict(r, id=f"copy-{r['id']}") for r in records[:100]]
    src = tmp_path / "t0.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    steps = [{"exact_dedup": {}}, {"minhash_dedup": {"threshold": 0.8}}]
    in_ram = curate_path(src, steps, tmp_path / "ram", show_progress=False)
    spill_files: list[runner.SpillFile] = []

    class RecordedSpill(runner.SpillFile):
        def __init__(self, path: Path, like: np.ndarray) -> None:
            super().__init__(path, like)
            spill_files.append(self)

    monkeypatch.setattr(runner, "SPILL_BYTES", 1)
    monkeypatch.setattr(runner, "SpillFile", RecordedSpill)
    monkeypatch.setattr(reader, "BLOCK_BYTES", 4096)  # ~2 rows a batch: ~800 batches
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    try:
        spilled = curate_path(src, steps, tmp_path / "disk", show_progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # exact_dedup's keys, MinHash's signatures, band keys and validity: one file each
    assert 3 <= len(spill_files) <= 5
    assert len({f.path for f in spill_files}) == len(spill_files)
    assert all(f.rows == len(records) for f in spill_files)
    assert not any(f.path.exists() for f in spill_files)  # the scratch folder went
    assert spilled.manifest.output["rows"] == in_ram.manifest.output["rows"] < len(records)
    assert spilled.removed.equals(in_ram.removed)
    for name in in_ram.manifest.output["shards"]:
        assert pq.read_table(tmp_path / "disk" / name).equals(
            pq.read_table(tmp_path / "ram" / name))


def test_streamed_run_defers_a_row_local_step_to_the_survivors(tmp_path: Path,
                                                              shared_data: Path) -> None:
    """A row-local step after dedup (quality) is mapped in a second pass over the rows still
    alive, not on every row while reading; the result equals the in-memory runner's."""
    from datadiet.pipeline.curate import curate_path
    from datadiet.pipeline.executors import maps_during_read

    records = _t0_records(shared_data, 2500)
    records += [dict(r, id=f"copy-{r['id']}") for r in records[:300]]
    src = tmp_path / "t0.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    steps = [{"exact_dedup": {}}, {"minhash_dedup": {}}, {"quality": {}}]
    quality = QualityFilter()
    assert maps_during_read(quality, 0) and not maps_during_read(quality, 2)
    assert maps_during_read(ExactDedup(), 1)
    mapped_rows: list[int] = []
    original = QualityFilter.row_features

    def counting(self, texts):  # noqa: ANN001, ANN202 - the method's own signature
        mapped_rows.append(len(texts))
        return original(self, texts)

    QualityFilter.row_features = counting  # type: ignore[method-assign]
    try:
        streamed = curate_path(src, steps, tmp_path / "out", show_progress=False)
    finally:
        QualityFilter.row_features = original  # type: ignore[method-assign]
    alive_before_quality = streamed.manifest.steps[2].rows_in
    assert sum(mapped_rows) == alive_before_quality < len(records)
    in_memory = curate(Dataset.from_list(records), steps)
    assert streamed.removed.sort_by("input_row").equals(in_memory.removed.sort_by("input_row"))
    assert streamed.dataset["id"] == in_memory.dataset["id"]
    assert streamed.manifest.steps[2].removed == in_memory.manifest.steps[2].removed


def test_a_step_context_outside_the_runner_removes_its_scratch_folder() -> None:
    """A step run with a bare ``StepContext`` (a test, a flow task) gets scratch space that
    disappears with the context, or at exit if the context lives that long: no ``datadiet-*``
    folder is left in $TMPDIR (the DSIR and decontamination steps used to leave one a run)."""
    import gc

    from datadiet.pipeline.steps import StepContext

    ctx = StepContext(show_progress=False)
    (ctx.scratch("probe") / "x.npy").write_bytes(b"data")
    root = ctx.work_dir
    assert root is not None and root.exists()
    del ctx
    gc.collect()
    assert not root.exists()
    proc = subprocess.run(
        [sys.executable, "-c", "from datadiet.pipeline.steps import StepContext\n"
         "ctx = StepContext()\nprint(ctx.scratch('probe'))"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not Path(proc.stdout.strip()).parent.exists()
