"""Reports a reader can check: markdown tables, PNG plots, and the saved-compute report.

Why in the library and not in ``flows/``: the benchmark (``benchmarks/e2e.py``), ``datadiet
demo`` and the Prefect flows all write the same report, and the flows must stay thin wrappers.
Flows publish what this module writes as artifacts; nothing here imports Prefect.

Plots are written atomically as PNG files and also returned as ``data:`` URIs, so the same
image can sit beside ``report.md`` on disk and inside a Prefect markdown artifact (which has no
file server behind it).
"""

from __future__ import annotations

import base64
import io
import math
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datadiet.pipeline.io import atomic_path, atomic_write_text

__all__ = [
    "RunContext",
    "bar_plot",
    "before_after_rows",
    "cell",
    "histogram",
    "inline_images",
    "line_plot",
    "loss_vs_flops_plot",
    "markdown_table",
    "save_png",
    "strategy_plot",
]


def _pyplot():  # noqa: ANN202 - matplotlib types stay out of the signatures
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are written on servers and Dask workers
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike) -> str:
    """Write ``fig`` to ``path`` (atomically) and return the PNG as a data URI for markdown."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    data = buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _caption(ax: Any, caption: str | None) -> None:
    """The provenance line under a figure: command, seeds, data, machine."""
    if caption:
        ax.figure.text(0.01, -0.02, caption, fontsize=6.5, color="#555555", va="top", wrap=True)


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str,
             path: str | os.PathLike, caption: str | None = None) -> str:
    """Grouped bars, one group per label, one bar per series."""
    plt = _pyplot()
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
    _caption(ax, caption)
    return save_png(fig, path)


def line_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
              ylabel: str, path: str | os.PathLike, log_x: bool = False,
              caption: str | None = None) -> str:
    """One line per named (x, y) curve."""
    plt = _pyplot()
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
    _caption(ax, caption)
    return save_png(fig, path)


def histogram(values: dict[str, Sequence[float]], title: str, xlabel: str,
              path: str | os.PathLike, ylabel: str = "prompts") -> str:
    """Overlaid histograms, one per named sample."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, sample in values.items():
        ax.hist(list(sample), bins=20, alpha=0.6, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def loss_vs_flops_plot(
    runs: dict[str, Sequence[Sequence[tuple[float, float]]]],
    target_loss: float | None,
    path: str | os.PathLike,
    title: str = "Eval loss vs training FLOPs",
    extra_flops: dict[str, float] | None = None,
    caption: str | None = None,
) -> str:
    """Eval-loss curves of several arms against cumulative FLOPs, with the target-loss line.

    ``runs`` maps an arm to its seeds' curves, each a list of ``(flops, eval_loss)``. Every seed
    is drawn thin, the mean over seeds thick. ``extra_flops[arm]`` (curation) shifts that arm's
    curves right, so where a curve crosses the dashed target line *is* the FLOPs that arm paid
    to reach the baseline's final loss, curation included: the ratio reads off the picture.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    extra_flops = extra_flops or {}
    for k, (arm, seeds) in enumerate(runs.items()):
        color = colors[k % len(colors)]
        shift = float(extra_flops.get(arm, 0.0))
        for curve in seeds:
            xs = [f + shift for f, _ in curve]
            ax.plot(xs, [v for _, v in curve], color=color, alpha=0.3, linewidth=0.8)
        mean = _mean_curve(seeds)
        if mean:
            label = arm + (f" (+{shift:.2e} curation FLOPs)" if shift else "")
            ax.plot([f + shift for f, _ in mean], [v for _, v in mean], color=color, linewidth=2,
                    marker="o", markersize=2.5, label=label)
    if target_loss is not None and math.isfinite(target_loss):
        ax.axhline(target_loss, color="black", linestyle="--", linewidth=1,
                   label=f"target: baseline final loss {target_loss:.3f}")
    ax.set_title(title)
    ax.set_xlabel("training FLOPs (analytic, cumulative)")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_xscale("symlog", linthresh=_linthresh(runs))  # symlog: the first eval is at 0 FLOPs
    ax.set_xlim(left=0)  # FLOPs are never negative; symlog's autoscale would show -1e11
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _caption(ax, caption)
    return save_png(fig, path)


def _linthresh(runs: dict[str, Sequence[Sequence[tuple[float, float]]]]) -> float:
    positive = [f for seeds in runs.values() for curve in seeds for f, _ in curve if f > 0]
    return min(positive) if positive else 1.0


def _mean_curve(seeds: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Point-wise mean over seeds (the seeds of one arm evaluate at the same FLOPs)."""
    if not seeds:
        return []
    n = min(len(c) for c in seeds)
    return [(seeds[0][i][0], sum(c[i][1] for c in seeds) / len(seeds)) for i in range(n)]


def strategy_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike,
                  caption: str | None = None) -> str:
    """Prompt tokens and accuracy per prompting strategy, side by side."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.4))
    names = [str(r["strategy"]) for r in rows]
    left.bar(names, [float(r["mean_prompt_tokens"]) for r in rows], color="#4C72B0")
    left.set_title("mean prompt tokens")
    measured = [r for r in rows if r.get("accuracy") is not None]
    right.bar([str(r["strategy"]) for r in measured],
              [100.0 * float(r["accuracy"]) for r in measured], color="#55A868")
    right.set_title("accuracy (%)" if measured else "accuracy: not measured")
    right.set_ylim(0, 100)
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(axis="y", alpha=0.3)
    _caption(left, caption)
    return save_png(fig, path)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub markdown table; the first row's keys are the columns."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def cell(value: Any) -> str:
    """One table cell: 4 significant digits, big numbers in scientific notation, ``-`` for none."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
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


@dataclass
class RunContext:
    """Where a figure came from: the command, the seeds, the data, the machine and its load."""

    command: str
    seeds: Sequence[int] = ()
    data: str = ""
    machine: str = field(default_factory=lambda: describe_machine())

    def caption(self) -> str:
        seeds = ", ".join(str(s) for s in self.seeds) or "-"
        return f"command: {self.command} | seeds: {seeds} | data: {self.data} | {self.machine}"


def describe_machine() -> str:
    """CPU count, platform and the 1-minute load average (shared machines are slower)."""
    try:
        load = f"load {os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - platforms without getloadavg
        load = "load n/a"
    return f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, {load}"


def inline_images(markdown: str, root: str | os.PathLike) -> str:
    """``![alt](file.png)`` links to files under ``root`` become ``data:`` URIs.

    A Prefect markdown artifact has no file server behind it, so the report published there
    carries its images inside; the ``report.md`` on disk keeps plain file links.
    """
    root = Path(root)

    def embed(match: re.Match) -> str:
        path = root / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", embed, markdown)


def write_markdown(path: str | os.PathLike, title: str, sections: Sequence[str]) -> Path:
    """``# title`` and the non-empty sections, written atomically."""
    path = Path(path)
    atomic_write_text(path, f"# {title}\n\n" + "\n\n".join(s for s in sections if s) + "\n")
    return path
