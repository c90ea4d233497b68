"""Run reports as Prefect artifacts: a markdown summary, a before/after table, plots as images.

Plots are PNG files written next to the run's outputs and embedded in the markdown artifact as
``data:`` URIs, so the Prefect UI shows them without any file server; the same PNGs stay on
disk for whoever reads the output folder.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from datadiet.pipeline.io import atomic_path


def _figure():  # noqa: ANN202 - matplotlib types stay out of the signatures
    import matplotlib

    matplotlib.use("Agg")  # headless: flows run on servers and Dask workers
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> str:
    """Write ``fig`` to ``path`` (atomically) and return the PNG as a data URI for markdown."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str,
             path: Path) -> str:
    """Grouped bars, one group per label, one bar per series."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def line_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
              ylabel: str, path: Path, log_x: bool = False) -> str:
    """One line per named (x, y) curve."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def histogram(values: dict[str, Sequence[float]], title: str, xlabel: str, path: Path) -> str:
    """Overlaid histograms, one per named sample."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, sample in values.items():
        ax.hist(list(sample), bins=20, alpha=0.6, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("prompts")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value).replace("|", "\\|")


def before_after_rows(measures: dict[str, tuple[float | None, float | None]]) -> list[dict]:
    """The table every report has: one row per measure, before, after, and after/before."""
    rows = []
    for name, (before, after) in measures.items():
        ratio = (after / before) if before and after is not None else None
        rows.append({"measure": name, "before": before, "after": after,
                     "after / before": None if ratio is None else round(ratio, 4)})
    return rows


def publish(key: str, title: str, sections: Sequence[str], table: list[dict],
            table_description: str) -> None:
    """Publish the run's markdown report and its before/after table under stable keys.

    Keys make reports of the same deployment a series in the UI's artifact view, so the newest
    report and its history sit on one page.
    """
    create_markdown_artifact(markdown=f"# {title}\n\n" + "\n\n".join(s for s in sections if s),
                             key=f"{key}-report", description=title)
    create_table_artifact(table=[{k: _cell(v) for k, v in row.items()} for row in table],
                          key=f"{key}-table", description=table_description)


def image_section(caption: str, data_uri: str) -> str:
    return f"### {caption}\n\n![{caption}]({data_uri})"
