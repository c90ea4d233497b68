"""The Python API's side of issue 8: the same checks and the same id rule as the CLI.

``datadiet.curate`` takes a Dataset or a list of dicts; ``load_corpus`` takes files, folders, a
``save_to_disk`` folder, a Dataset or a list. Every path gets the text-column check and the one
id rule (a source id, or a content hash with ``-2``, ``-3`` for repeats; a repeated source id
is an error naming both rows). Rows run in-process: they load no model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

import datadiet
from datadiet.pipeline.io import DataError, SpecError, UserError, load_corpus

TEXTS = ["one document about rivers", "another about bread", "a third about stars"]


@dataclass
class ApiRow:
    name: str
    call: Callable[[Path], Any]
    error: type[Exception] | None
    message: str = ""


def save_to_disk(tmp: Path, texts: list[str]) -> Path:
    folder = tmp / "saved"
    Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    return folder


ROWS = [
    ApiRow("list-of-dicts", lambda t: datadiet.curate([{"text": x} for x in TEXTS], ["exact_dedup"]),
           None),
    ApiRow("list-text-not-a-string", lambda t: datadiet.curate([{"text": "a"}, {"text": 3}],
                                                               ["exact_dedup"]),
           DataError, r"records row 2: field 'text' is int, not a string"),
    ApiRow("list-not-a-dict", lambda t: datadiet.curate([{"text": "a"}, "b"], ["exact_dedup"]),
           DataError, r"records row 2: expected a JSON object, got str"),
    ApiRow("not-a-dataset", lambda t: datadiet.curate("corpus.jsonl", ["exact_dedup"]),
           DataError, r"expected a datasets.Dataset or a list of dicts, got str"),
    ApiRow("empty-list", lambda t: datadiet.curate([], ["exact_dedup"]), DataError,
           r"no records"),
    ApiRow("dataset-int-text", lambda t: datadiet.curate(Dataset.from_dict({"text": [1, 2]}),
                                                         ["exact_dedup"]),
           DataError, r"column 'text' is Value\('int64'\).*not a string column"),
    ApiRow("dataset-null-text", lambda t: datadiet.curate(Dataset.from_dict({"text": ["a", None]}),
                                                          ["exact_dedup"]),
           DataError, r"dataset row 2: field 'text' is null"),
    ApiRow("dataset-repeated-id", lambda t: datadiet.curate(
        Dataset.from_dict({"id": ["a", "b", "a"], "text": TEXTS}), ["exact_dedup"]),
           DataError, r"dataset row 3: repeated id 'a', first at dataset row 1"),
    ApiRow("list-repeated-id", lambda t: datadiet.curate(
        [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}], ["exact_dedup"]),
           DataError, r"records row 2: repeated id 'x', first at records row 1"),
    ApiRow("unknown-step", lambda t: datadiet.curate([{"text": "a"}], ["exact_dedupe"]),
           SpecError, r"unknown step 'exact_dedupe'"),
    ApiRow("bad-param-type", lambda t: datadiet.curate([{"text": "a"}], [{"random": {"seed": "x"}}]),
           SpecError, r"parameter 'seed' of step 'random'"),
    ApiRow("no-steps", lambda t: datadiet.curate([{"text": "a"}], []), SpecError, r"no steps"),
    ApiRow("missing-local-path", lambda t: load_corpus("data/nope.jsonl"), DataError,
           r"data/nope\.jsonl: no such file or folder"),
    ApiRow("bad-on-error", lambda t: load_corpus([{"text": "a"}], on_error="ignore"), SpecError,
           r"on_error must be 'raise' or 'skip'"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_api_row(row: ApiRow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    if row.error is None:
        row.call(tmp_path)
    else:
        with pytest.raises(row.error, match=row.message) as info:
            row.call(tmp_path)
        assert isinstance(info.value, UserError)
    assert os.listdir(tmp_path / "tmp") == [], "temp data left behind"


@pytest.mark.parametrize("kind", ["dataset", "list", "save_to_disk", "jsonl", "parquet"])
def test_content_ids_get_suffixes_on_every_path(kind: str, tmp_path: Path) -> None:
    """Identical texts without ids: hash, hash-2, hash-3 — whatever the input path."""
    texts = ["same words", "other words", "same words", "same words"]
    source: Any
    if kind == "dataset":
        source = Dataset.from_dict({"text": texts})
    elif kind == "list":
        source = [{"text": t} for t in texts]
    elif kind == "save_to_disk":
        source = save_to_disk(tmp_path, texts)
    elif kind == "jsonl":
        source = tmp_path / "x.jsonl"
        source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        source = tmp_path / "x.parquet"
        Dataset.from_dict({"text": texts}).to_parquet(str(source))
    ids = load_corpus(source).dataset["id"]
    base = ids[0]
    assert ids[2:] == [f"{base}-2", f"{base}-3"] and len(set(ids)) == 4


def test_curate_keeps_the_callers_columns_and_explains(tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "text": t, "lang": "en"} for i, t in enumerate(TEXTS + TEXTS[:1])]
    result = datadiet.curate(records, ["exact_dedup"])
    assert result.dataset["id"] == ["r0", "r1", "r2"]
    assert set(result.dataset.column_names) >= {"id", "text", "lang"}
    assert result.why("r3") == "exact_dedup: exact-duplicate-of:r0"


def test_renamed_source_ids_are_counted() -> None:
    loaded = load_corpus([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}],
                         on_duplicate_id="rename")
    assert loaded.dataset["id"] == ["x", "x-2"] and loaded.renamed_ids == 1
