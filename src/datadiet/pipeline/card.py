"""The curated output's metadata: the dataset card, the removed rows, the manifest.

Why a module of its own: a curated folder is meant to be used as it is, by readers datadiet does
not control (Hugging Face ``datasets`` and the Hub, Arrow, DuckDB, Polars), so what lies beside
the data shards, and where, is a contract with them. The card (``README.md``) is a Hugging Face
dataset card whose YAML header names the data files (``configs``) and their columns
(``dataset_info``): ``load_dataset(out)`` reads exactly the shards, and the folder can be pushed
to a hub as it is. datadiet's own files go in the hidden ``.datadiet/`` folder (see
``io.META_DIR``), which every reader's folder discovery skips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from datadiet.pipeline.atomic import atomic_write_text
from datadiet.pipeline.io import CARD_FILE, MANIFEST_FILE, REMOVED_FILE, write_removed
from datadiet.pipeline.manifest import Manifest

__all__ = ["dataset_card", "write_curated_metadata"]

#: The glob the card's ``configs`` give for the data files: the shards and nothing else.
DATA_FILES = "data-*.parquet"


def write_curated_metadata(folder: Path, manifest: Manifest, removed: pa.Table) -> None:
    """Write the removed rows, the manifest and the card into ``folder`` (the temp folder of
    an atomic write, whose data shards, listed in ``manifest.output["shards"]``, are written)."""
    write_removed(removed, folder / REMOVED_FILE)
    manifest.output["removed_file"] = REMOVED_FILE
    manifest.output["card_file"] = CARD_FILE
    atomic_write_text(folder / MANIFEST_FILE, manifest.to_json())
    shards = manifest.output.get("shards", [])
    schema = pq.read_schema(folder / shards[0]) if shards else pa.schema([])
    nbytes = sum((folder / s).stat().st_size for s in shards)
    atomic_write_text(folder / CARD_FILE, dataset_card(manifest, schema, nbytes))


def _card_header(manifest: Manifest, schema: pa.Schema, nbytes: int) -> dict[str, Any]:
    """The YAML header: the data files and their features, in the Hub's format."""
    rows = int(manifest.output.get("rows", 0))
    features = [{"name": f.name, **_yaml_type(f.type)} for f in schema]
    return {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": DATA_FILES}]}],
        "dataset_info": {"features": features,
                         "splits": [{"name": "train", "num_bytes": nbytes, "num_examples": rows}],
                         "download_size": nbytes, "dataset_size": nbytes},
        "tags": ["datadiet", "curated"],
    }


#: Arrow's names for the types whose Hugging Face dtype is spelled differently.
_HF_DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def _yaml_type(arrow_type: pa.DataType) -> dict[str, Any]:
    """A column's type as the card's ``dataset_info.features`` spell it: ``dtype`` for a value,
    ``list`` for a list, ``struct`` for a record (written here rather than by ``datasets``,
    which a curate run does not otherwise import: a second of start-up)."""
    if pa.types.is_struct(arrow_type):
        return {"struct": [{"name": f.name, **_yaml_type(f.type)} for f in arrow_type]}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = _yaml_type(arrow_type.value_type)
        return {"list": inner.get("dtype") or inner.get("struct") or inner}
    name = str(arrow_type)
    return {"dtype": _HF_DTYPES.get(name, name)}


def _removal_table(manifest: Manifest) -> str:
    """Per step: rows in, rows out, and the removals by reason, as a Markdown table."""
    lines = ["| step | rows in | rows out | removed (by reason) |", "|---|---:|---:|---|"]
    for step in manifest.steps:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in step.removed.items()) or "-"
        lines.append(f"| {step.name} | {step.rows_in:,} | {step.rows_out:,} | {reasons} |")
    return "\n".join(lines)


def dataset_card(manifest: Manifest, schema: pa.Schema, nbytes: int) -> str:
    """The card: the Hub's YAML header, then counts, how to load, the removals and the spec."""
    header = yaml.safe_dump(_card_header(manifest, schema, nbytes), sort_keys=False)
    rows_in = int(manifest.input.get("rows", 0))
    rows = int(manifest.output.get("rows", 0))
    share = f" ({100.0 * rows / rows_in:.1f}%)" if rows_in else ""
    spec = yaml.safe_dump(manifest.spec, sort_keys=False).strip() if manifest.spec else "[]"
    source = manifest.input.get("source", "?")
    return f"""---
{header}---

# Curated dataset

Curated by [datadiet](https://pypi.org/project/datadiet/) from `{source}`: **{rows:,}** of
{rows_in:,} rows kept{share}, written {manifest.created}.

## Loading

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder", split="train")
```

The data files are `{DATA_FILES}` at the top of this folder; DuckDB
(`read_parquet('folder/*.parquet')`), Polars (`scan_parquet('folder/*.parquet')`) and Arrow
(`pyarrow.dataset.dataset(files)`) read them directly. datadiet's own files are in the hidden
`.datadiet/` folder: `manifest.json` (the run, repeatable with `datadiet curate --spec`) and
`removed.arrow` (every removed row with its step and reason; `datadiet why FOLDER ID`).

## What was removed

{_removal_table(manifest)}

## Spec

```yaml
{spec}
```

## Input

```json
{json.dumps({k: manifest.input.get(k) for k in ("source", "fingerprint", "rows", "text_field",
                                              "id_field")}, indent=2)}
```
"""
