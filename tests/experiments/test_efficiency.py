"""The library half of the ``efficiency`` chain, without Prefect: its plan, counts and summary.

What must hold: curation's rows before and after come from its manifest (the test deletes the
curated data and still gets them), the plan sizes curation from the file system without
reading the corpus and grows with it, and the before/after table carries each stage's figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datadiet.experiments.efficiency import (
    corpus_bytes,
    curated_rows,
    efficiency_plan,
    efficiency_summary,
)
from datadiet.pipeline.curate import curate_path
from datadiet.pipeline.io import DataError, find_manifest
from datadiet.pipeline.stages.training import TrainConfig


@pytest.fixture
def corpus(tmp_path: Path, wiki_paragraphs: list[str]) -> Path:
    """Real paragraphs, the first ten repeated: exact dedup removes ten rows."""
    texts = wiki_paragraphs[:60] + wiki_paragraphs[:10]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


def test_curated_rows_come_from_the_manifest(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "curated"
    result = curate_path(corpus, ["exact_dedup"], out, show_progress=False)
    assert curated_rows(out) == (70, len(result.dataset)) == (70, 60)
    shards = list(out.rglob("*.parquet"))
    assert shards
    for data in shards:  # the data gone, the manifest stays: same counts
        data.unlink()
    assert find_manifest(out) is not None
    assert curated_rows(out) == (70, 60)
    shutil.rmtree(out)
    out.mkdir()
    with pytest.raises(DataError, match="no datadiet manifest"):
        curated_rows(out)


def test_plan_sizes_curation_from_the_file_system(corpus: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(corpus), eval_data=str(corpus), seq_len=64, batch_size=4,
                         max_steps=10)
    assert corpus_bytes(corpus) == corpus.stat().st_size
    assert corpus_bytes(corpus.parent) >= corpus.stat().st_size  # a folder: its data files
    assert corpus_bytes("someone/some-hub-dataset") is None
    small = dict(efficiency_plan(corpus, config))
    assert list(small) == ["curate", "train", "report"]
    bigger = tmp_path / "big" / "corpus.jsonl"
    bigger.parent.mkdir()
    bigger.write_bytes(corpus.read_bytes() * 50)
    assert dict(efficiency_plan(bigger, config))["curate"] > small["curate"]
    full = dict(efficiency_plan(corpus, config, prompts=5, fine_tune_steps=20, pretrain_base=True))
    assert list(full) == ["curate", "train", "fine-tune", "prompts", "score prompts", "report"]
    assert full["fine-tune"] > dict(efficiency_plan(corpus, config, fine_tune_steps=20))["fine-tune"]


def test_summary_table_and_sections(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "curated"
    curate_path(corpus, ["exact_dedup"], out, show_progress=False)
    report = tmp_path / "report.md"
    report.write_text("# saved compute\n\n![curve](curve.png)\n", encoding="utf-8")
    (tmp_path / "curve.png").write_bytes(b"\x89PNG fake")
    curated = {"out": str(out), "tokens_in": 7000, "tokens_out": 6000}
    trained = {"out": str(tmp_path / "training"),
               "runs": {"baseline": {"train_flops": 4e9}, "candidate": {"train_flops": 4e9}},
               "comparison": {"target_eval_loss": 3.25, "baseline_flops": 4e9,
                              "candidate_flops": 2e9, "flops_saved_x": 2.0}}
    table, sections = efficiency_summary(
        str(corpus), curated, trained, report,
        finetuned={"pool_rows": 100, "selections": {"selected": {"rows_out": 40}}},
        prompts={"tokens_before": 900, "tokens_after": 450, "prompts": "p.jsonl"})
    rows = {r["measure"]: (r["before"], r["after"], r["after / before"]) for r in table}
    assert rows["corpus rows"] == (70, 60, round(60 / 70, 4))
    assert rows["corpus tokens"][:2] == (7000, 6000)
    assert rows["training FLOPs to eval loss 3.25"] == (4e9, 2e9, 0.5)
    assert rows["instruction rows"][:2] == (100, 40)
    assert rows["prompt tokens"][2] == 0.5
    assert "**2.00x fewer training FLOPs**" in sections[1]
    assert "| corpus rows | 70 | 60 |" in sections[2]
    assert "data:image/png;base64," in sections[-1]  # the report's plot travels inline
