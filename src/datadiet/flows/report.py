"""Run reports as Prefect artifacts: a markdown summary, a before/after table, plots as images.

The tables and plots themselves are written by the library (:mod:`datadiet.pipeline.report`),
which the benchmark and ``datadiet demo`` share; this module only publishes them. Plots are PNG
files next to the run's outputs, embedded in the markdown artifact as ``data:`` URIs so the
Prefect UI shows them without any file server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from datadiet.pipeline.report import (  # noqa: F401 - re-exported for the flows
    bar_plot,
    before_after_rows,
    histogram,
    line_plot,
    markdown_table,
    save_png,
)


def publish(key: str, title: str, sections: Sequence[str], table: list[dict],
            table_description: str) -> None:
    """Publish the run's markdown report and its before/after table under ``key``.

    ``key`` names one deployment or dataset (:func:`datadiet.flows.common.series_key`), so the
    reports of its runs form a series in the UI's artifact view: the newest and its history on
    one page, apart from other datasets'. Table cells stay numbers (the UI sorts and copies them
    as such); only the markdown report formats them.
    """
    create_markdown_artifact(markdown=f"# {title}\n\n" + "\n\n".join(s for s in sections if s),
                             key=f"{key}-report", description=title)
    create_table_artifact(table=[{k: table_value(v) for k, v in row.items()} for row in table],
                          key=f"{key}-table", description=table_description)


def table_value(value: Any) -> Any:
    """A table artifact cell: numbers as JSON numbers (non-finite ones, which JSON lacks, as
    text), None as null, anything else as its text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # a NumPy scalar
        return table_value(value.item())
    return str(value)


def image_section(caption: str, data_uri: str) -> str:
    return f"### {caption}\n\n![{caption}]({data_uri})"
