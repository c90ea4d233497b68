"""Reading corpora: every format, and bad input that names its file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datadiet.pipeline.io import AtomicOutputDir, DataError, load_corpus


def _write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_jsonl_gz_parquet_and_text_agree(tmp_path: Path, wiki_paragraphs: list[str]) -> None:
    docs = wiki_paragraphs[:30]
    recs = [{"id": f"w{i}", "text": t} for i, t in enumerate(docs)]
    a = load_corpus(_write_jsonl(tmp_path / "a.jsonl.gz", recs, gz=True)).dataset
    pq.write_table(pa.table({"id": [r["id"] for r in recs], "text": docs}), tmp_path / "b.parquet")
    b = load_corpus(tmp_path / "b.parquet").dataset
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    c = load_corpus(tmp_path / "c.txt").dataset
    assert a["text"] == b["text"] == c["text"] == docs
    assert a["id"] == b["id"] == [f"w{i}" for i in range(30)]
    assert len(set(c["id"])) == 30  # content-hash ids


def test_folder_of_shards_and_saved_dataset(tmp_path: Path, wiki_paragraphs: list[str]) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_jsonl(folder / "0.jsonl", [{"text": t} for t in wiki_paragraphs[:5]])
    _write_jsonl(folder / "1.jsonl", [{"text": t} for t in wiki_paragraphs[5:9]])
    loaded = load_corpus(folder)
    assert len(loaded.dataset) == 9
    loaded.dataset.save_to_disk(str(tmp_path / "saved"))
    again = load_corpus(tmp_path / "saved")
    assert again.dataset["text"] == loaded.dataset["text"]


def test_identical_texts_get_distinct_hash_ids(tmp_path: Path) -> None:
    ds = load_corpus(_write_jsonl(tmp_path / "d.jsonl", [{"text": "same words"}] * 3)).dataset
    assert len(set(ds["id"])) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "fine"}\n{"text": "broken"\n', r"x\.jsonl:2: malformed JSON"),
        (b'{"text": "fine"}\n{"body": "no text"}\n', r"x\.jsonl:2: missing text field 'text'"),
        (b'{"text": "fine"}\n{"text": "bad \xff byte"}\n', r"x\.jsonl:2: invalid UTF-8"),
        (b'{"text": 3}\n', r"x\.jsonl:1: field 'text' is int"),
        (b"", r"x\.jsonl: empty file"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_corpus(path)


def test_skip_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "one"}\nnot json\n{"text": "two \xff"}\n{"x": 1}\n{"text": "three"}\n')
    loaded = load_corpus(path, on_error="skip")
    assert loaded.dataset["text"] == ["one", "three"]
    assert loaded.skipped_count == 3
    assert [s.line for s in loaded.skipped] == [2, 3, 4]


def test_parquet_missing_column_and_custom_field(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["a b c"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: missing text field 'text' \(columns: body\)"):
        load_corpus(tmp_path / "p.parquet")
    assert load_corpus(tmp_path / "p.parquet", text_field="body").dataset["body"] == ["a b c"]


def test_hub_id_offline_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="not a dataset in the Hugging Face cache"):
        load_corpus("some-org/some-dataset-that-is-not-here")


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with AtomicOutputDir(target) as tmp:
            (tmp / "half.parquet").write_text("partial")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with AtomicOutputDir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "manifest.json").write_text("{}")  # the marker: a datadiet output may be replaced
    with pytest.raises(FileExistsError):
        with AtomicOutputDir(target):
            pass
    with AtomicOutputDir(target, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
