"""A curated output is a clean dataset: every reader a user points at it sees the kept rows only.

Each test runs `datadiet curate` on real text with real removals (exact and near duplicates
planted in WikiText and Conan Doyle paragraphs), then reads the folder with the user's own tools.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset

from datadiet.cli import main
from datadiet.experiments.corpus import build_sample_corpus
from datadiet.pipeline.io import CARD_FILE, MANIFEST_FILE, REMOVED_FILE, iter_jsonl, read_removed

SPEC = "- exact_dedup: {}\n- minhash_dedup: {threshold: 0.7, num_perm: 64}\n"


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """One curated output (split over three shards), the input's ids and the removed ids."""
    root = tmp_path_factory.mktemp("layout")
    corpus = root / "corpus.jsonl"
    build_sample_corpus(corpus, n_base=80, shared_data=shared_data)
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    out = root / "curated"
    assert main(["curate", str(corpus), "--spec", str(spec), "--out", str(out), "--quiet",
                 "--rows-per-shard", "30", "--keep-fields", "planted"]) == 0
    rows = list(iter_jsonl(corpus))
    removed = set(read_removed(out / REMOVED_FILE, ["id"]).column("id").to_pylist())
    kept = sorted(r["id"] for r in rows if r["id"] not in removed)
    assert removed and len(kept) + len(removed) == len(rows)  # real removals, none lost
    return {"corpus": corpus, "out": out, "kept": kept, "removed": removed,
            "columns": {"id", "text", "planted"}}


def _ids(table: pa.Table) -> list[str]:
    return sorted(table.column("id").to_pylist())


def _readers(out: Path) -> dict[str, Callable[[], pa.Table]]:
    """The ways a user reads a Parquet folder, each returning an Arrow table."""
    return {
        "datasets.load_dataset(out)":
            lambda: load_dataset(str(out), split="train").data.table,
        "load_dataset('parquet', data_dir=out)":
            lambda: load_dataset("parquet", data_dir=str(out), split="train").data.table,
        "pyarrow.dataset(out, exclude_invalid_files=True)":
            lambda: pads.dataset(out, exclude_invalid_files=True).to_table(),
        "pyarrow.dataset(out/*.parquet)":
            lambda: pads.dataset(sorted(map(str, out.glob("*.parquet")))).to_table(),
        "duckdb out/**/*.parquet":
            lambda: duckdb.sql(f"SELECT * FROM read_parquet('{out}/**/*.parquet')").arrow(),
        "duckdb out/*.parquet":
            lambda: duckdb.sql(f"SELECT * FROM read_parquet('{out}/*.parquet')").arrow(),
        "polars out/**/*.parquet":
            lambda: pl.scan_parquet(f"{out}/**/*.parquet").collect().to_arrow(),
        "polars out/*.parquet": lambda: pl.scan_parquet(f"{out}/*.parquet").collect().to_arrow(),
    }


@pytest.mark.parametrize("reader", list(_readers(Path("."))))
def test_each_reader_returns_exactly_the_kept_rows(curated: dict, reader: str) -> None:
    table = _readers(curated["out"])[reader]()
    if isinstance(table, pa.RecordBatchReader):
        table = table.read_all()
    assert _ids(table) == curated["kept"]
    assert set(table.column_names) == curated["columns"]


def test_pyarrow_count_rows_counts_the_kept_rows(curated: dict) -> None:
    dataset = pads.dataset(curated["out"], exclude_invalid_files=True)
    assert dataset.count_rows() == len(curated["kept"])


@pytest.mark.parametrize("reader", ["pyarrow", "polars"])
def test_folder_readers_without_a_glob_never_return_removed_rows(curated: dict,
                                                                 reader: str) -> None:
    """Plain ``pyarrow.dataset(out)`` and ``polars.scan_parquet(out)`` take every file of the
    folder for Parquet (the card too): they may refuse the folder, loudly, but must never read
    rows that curation removed."""
    out = curated["out"]
    read = (lambda: pads.dataset(out).to_table()) if reader == "pyarrow" \
        else (lambda: pl.scan_parquet(out).collect().to_arrow())
    try:
        table = read()
    except (pa.ArrowInvalid, pl.exceptions.PolarsError) as exc:
        assert CARD_FILE in str(exc) or "extension" in str(exc)
        return
    assert _ids(table) == curated["kept"]


def test_card_is_a_hub_dataset_card_that_load_dataset_honours(curated: dict,
                                                               tmp_path: Path) -> None:
    out = curated["out"]
    text = (out / CARD_FILE).read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    (config,) = header["configs"]
    assert config["data_files"] == [{"split": "train", "path": "data-*.parquet"}]
    info = header["dataset_info"]
    assert {f["name"] for f in info["features"]} == curated["columns"]
    assert info["splits"][0]["num_examples"] == len(curated["kept"])
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for step in manifest["steps"]:  # the removal table: each step with its counts
        assert f"| {step['name']} | {step['rows_in']:,} | {step['rows_out']:,} |" in text
    assert "exact_dedup" in text.split("## Spec")[1]
    # The card's configs, not file discovery, decide what load_dataset reads: a stray Parquet
    # file of other rows beside the shards is not data.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    pq.write_table(pa.table({"id": ["stray"], "note": ["not data"]}), copy / "notes.parquet")
    ds = load_dataset(str(copy), split="train")
    assert sorted(ds["id"]) == curated["kept"]
    assert ds.info.splits["train"].num_examples == len(curated["kept"])


def test_why_reads_the_new_layout(curated: dict, capsys: pytest.CaptureFixture) -> None:
    removed_id = sorted(curated["removed"])[0]
    assert main(["why", str(curated["out"]), removed_id, curated["kept"][0], "nope"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{removed_id}: removed by ")
    assert lines[1] == f"{curated['kept'][0]}: kept"
    assert lines[2].startswith("nope: unknown id")


def test_why_reads_an_output_of_the_old_layout(curated: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """The layout before the hidden folder: manifest.json at the top, removed/removed.parquet."""
    old = tmp_path / "old"
    shutil.copytree(curated["out"], old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["output"]["removed_file"]  # the oldest manifests did not name it
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "removed").mkdir()
    pq.write_table(read_removed(old / REMOVED_FILE, ["id", "step", "reason"]),
                   old / "removed" / "removed.parquet")
    shutil.rmtree(old / ".datadiet")
    (old / CARD_FILE).unlink()
    removed_id = sorted(curated["removed"])[0]
    assert main(["why", str(old), removed_id, curated["kept"][0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{removed_id}: removed by ")
    assert lines[1] == f"{curated['kept'][0]}: kept"


def test_why_on_a_folder_without_manifest_exits_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "plain").mkdir()
    assert main(["why", str(tmp_path / "plain"), "x"]) == 2
    assert "not a folder written by `datadiet curate`" in capsys.readouterr().err


@pytest.mark.parametrize("spec_of", [lambda out: out / MANIFEST_FILE, lambda out: out,
                                     lambda out: out / "manifest.json"],
                         ids=["manifest", "folder", "old-manifest-path"])
def test_spec_from_a_curated_output_repeats_the_run(curated: dict, tmp_path: Path,
                                                    spec_of: Callable[[Path], Path]) -> None:
    again = tmp_path / "again"
    assert main(["curate", str(curated["corpus"]), "--spec", str(spec_of(curated["out"])),
                 "--out", str(again), "--quiet"]) == 0
    assert _ids(pads.dataset(sorted(map(str, again.glob("*.parquet")))).to_table()) \
        == curated["kept"]
