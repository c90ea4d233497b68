"""`datadiet export`: token files loaded back by the training stacks' own readers.

Input: a real curated output (WikiText and Conan Doyle paragraphs with planted duplicates, exact
and MinHash dedup). The oracle for every format is the tokenizer itself, document by document,
in the curated output's row order, each followed by end-of-text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from datadiet.cli import main
from datadiet.experiments.corpus import build_sample_corpus
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.models.tokenizer import load_tokenizer, train_bpe_tokenizer
from datadiet.pipeline.tokens import read_token_file


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("export")
    build_sample_corpus(root / "corpus.jsonl", n_base=60, shared_data=shared_data)
    out = root / "curated"
    curate_path(root / "corpus.jsonl", ["exact_dedup", "minhash_dedup"], out,
                show_progress=False)
    return out


@pytest.fixture(scope="module")
def texts(curated: Path) -> list[str]:
    return [t for s in sorted(curated.glob("data-*.parquet"))
            for t in pq.read_table(s, columns=["text"]).column("text").to_pylist()]


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory: pytest.TempPathFactory, wiki_paragraphs: list[str]) -> Path:
    """A local tokenizer folder (a small BPE fitted to WikiText)."""
    return train_bpe_tokenizer(wiki_paragraphs[:300], 600, tmp_path_factory.mktemp("tok") / "bpe")


def _expected(texts: list[str], tokenizer: str | Path) -> list[list[int]]:
    tok = load_tokenizer(str(tokenizer))
    return [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]


def _export(curated: Path, out: Path, *flags: str) -> dict:
    assert main(["export", str(curated), "--out", str(out), *flags]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_megatron_indexed_dataset_reads_one_sequence_per_document(
        curated: Path, texts: list[str], bpe_folder: Path, tmp_path: Path) -> None:
    manifest = _export(curated, tmp_path / "tok", "--tokenizer", str(bpe_folder),
                       "--format", "megatron")
    expected = _expected(texts, bpe_folder)
    dataset = IndexedDataset(str(tmp_path / "tok" / "tokens"))
    assert len(dataset) == len(texts) == manifest["documents"]
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    assert dataset.document_indices.tolist() == list(range(len(texts) + 1))
    assert dataset[0].dtype == np.uint16
    assert manifest["tokens"] == sum(map(len, expected))


def test_memmap_with_sidecar_is_the_token_stream(curated: Path, texts: list[str],
                                                 bpe_folder: Path, tmp_path: Path) -> None:
    manifest = _export(curated, tmp_path / "tok", "--tokenizer", str(bpe_folder),
                       "--format", "memmap")
    sidecar = json.loads((tmp_path / "tok" / "tokens.json").read_text())
    stream = np.memmap(tmp_path / "tok" / sidecar["file"], dtype=sidecar["dtype"], mode="r")
    expected = _expected(texts, bpe_folder)
    assert stream.tolist() == [t for doc in expected for t in doc]
    assert int((stream == sidecar["eos_token_id"]).sum()) == len(texts) == sidecar["documents"]
    tok = load_tokenizer(str(bpe_folder))
    assert manifest["tokenizer"] == {"name": str(bpe_folder), "hash": sidecar["tokenizer_hash"],
                                     "vocab_size": len(tok), "eos_token_id": tok.eos_token_id}
    assert not (tmp_path / "tok" / "tokens.idx").exists()  # only the formats asked for


def test_litdata_streaming_dataset_reads_the_token_stream(curated: Path, texts: list[str],
                                                          tmp_path: Path) -> None:
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    _export(curated, tmp_path / "tok", "--tokenizer", "bytes", "--format", "litdata")
    stream = np.array([b for t in texts for b in [*t.encode("utf-8"), 256]])
    block = 64
    dataset = StreamingDataset(str(tmp_path / "tok" / "litdata"),
                               item_loader=TokensLoader(block_size=block))
    assert len(dataset) == len(stream) // block  # one chunk: only the tail is not a block
    got = np.concatenate([dataset[i].numpy() for i in range(len(dataset))])
    assert np.array_equal(got, stream[: len(got)])


def test_default_tokenizer_is_smollm2_and_formats_share_the_bytes(curated: Path,
                                                                   texts: list[str],
                                                                   tmp_path: Path) -> None:
    manifest = _export(curated, tmp_path / "tok")
    assert manifest["tokenizer"]["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert manifest["tokenizer"]["vocab_size"] == 49152
    assert set(manifest["formats"]) == {"megatron", "memmap"}
    token_file = read_token_file(tmp_path / "tok")
    megatron = IndexedDataset(str(tmp_path / "tok" / "tokens"))
    assert np.array_equal(np.concatenate([megatron[i] for i in range(len(megatron))]),
                          token_file.tokens)
    assert megatron[3].tolist() == _expected(texts[3:4], "HuggingFaceTB/SmolLM2-135M-Instruct")[0]


def test_vocabulary_over_uint16_writes_uint32(curated: Path, bpe_folder: Path,
                                              tmp_path: Path) -> None:
    """A token id of 65,536 or more does not fit uint16: the stream is uint32 (Megatron's
    int32, the same bytes) and the id survives."""
    tok = load_tokenizer(str(bpe_folder))
    last = f"<x{65_600 - len(tok) - 1}>"
    tok.add_tokens([f"<x{i}>" for i in range(65_600 - len(tok))])
    big = tmp_path / "big-tokenizer"
    tok.save_pretrained(big)
    data = tmp_path / "doc.jsonl"
    data.write_text(json.dumps({"id": "a", "text": f"Holmes {last} smiled"}) + "\n")
    manifest = _export(data, tmp_path / "tok", "--tokenizer", str(big))
    assert manifest["memmap"]["dtype"] == "uint32"
    top = tok.convert_tokens_to_ids(last)
    assert top > 65_535
    assert top in read_token_file(tmp_path / "tok").tokens.tolist()
    megatron = IndexedDataset(str(tmp_path / "tok" / "tokens"))  # alive while its rows are read
    assert top in megatron[0].tolist()


@pytest.mark.parametrize("case", ["bad-json", "missing-field", "bad-format"])
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "a", "text": "fine"}\n' + ('{"id": "b", oops}\n' if case == "bad-json"
                                                       else '{"id": "b", "body": "x"}\n'))
    flags = ["--format", "parquet"] if case == "bad-format" else []
    assert main(["export", str(data), "--out", str(tmp_path / "out"), "--tokenizer", "bytes",
                 *flags]) == 2
    err = capsys.readouterr().err
    expected = {"bad-json": "in.jsonl:2", "missing-field": "in.jsonl:2",
                "bad-format": "--format: parquet"}[case]
    assert expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_export_of_an_arrow_table_of_many_batches_keeps_order(tmp_path: Path) -> None:
    """More rows than one tokenizer piece and one reader batch: order across threads holds."""
    texts = [f"document {i} " * (i % 7 + 1) for i in range(25_000)]
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}),
                   tmp_path / "in.parquet")
    _export(tmp_path / "in.parquet", tmp_path / "tok", "--tokenizer", "bytes", "--workers", "3")
    stream = read_token_file(tmp_path / "tok").tokens
    ends = np.flatnonzero(stream == 256)
    assert len(ends) == len(texts)
    starts = np.concatenate(([0], ends[:-1] + 1))
    for i in (0, 999, 1000, 10_001, 24_999):
        assert bytes(stream[starts[i]: ends[i]].astype(np.uint8)).decode() == texts[i]
