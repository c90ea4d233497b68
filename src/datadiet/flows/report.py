"""Run reports as Prefect artifacts: a markdown summary, a before/after table, plots as images.

The tables and plots themselves are written by the library (:mod:`datadiet.pipeline.report`),
which the benchmark and ``datadiet demo`` share; this module only publishes them. Plots are PNG
files next to the run's outputs, embedded in the markdown artifact as ``data:`` URIs so the
Prefect UI shows them without any file server.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from datadiet.pipeline.report import (  # noqa: F401 - re-exported for the flows
    bar_plot,
    before_after_rows,
    cell,
    histogram,
    line_plot,
    markdown_table,
    save_png,
)


def publish(key: str, title: str, sections: Sequence[str], table: list[dict],
            table_description: str) -> None:
    """Publish the run's markdown report and its before/after table under stable keys.

    Keys make reports of the same deployment a series in the UI's artifact view, so the newest
    report and its history sit on one page.
    """
    create_markdown_artifact(markdown=f"# {title}\n\n" + "\n\n".join(s for s in sections if s),
                             key=f"{key}-report", description=title)
    create_table_artifact(table=[{k: cell(v) for k, v in row.items()} for row in table],
                          key=f"{key}-table", description=table_description)


def image_section(caption: str, data_uri: str) -> str:
    return f"### {caption}\n\n![{caption}]({data_uri})"
