"""The ``build_prompts`` flow: few-shot prompts for an evaluation set, then compressed.

For every query of the evaluation set it picks demonstrations from a labelled pool, lays them
out with the template, compresses the demonstrations (never the query) with
:func:`datadiet.prompting.compression.compress_batch`, and writes one JSONL row per prompt with
its token counts before and after; the token report is published as artifacts.

Seam: demonstration selection and ordering belong to ``datadiet.prompting.demos`` (issue 12).
Until that API is on main, :func:`choose_demonstrations` offers the one strategy that needs no
model — ``random``, seeded per run — so the rest of the flow (layout, compression, report,
caching) is in place; the strategies land there without changing the flow's shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from prefect import flow
from pydantic import Field, field_validator, model_validator

from datadiet.flows.common import FlowParams, cached_task, run_checked, stored
from datadiet.flows.report import (
    before_after_rows,
    histogram,
    image_section,
    markdown_table,
    publish,
)
from datadiet.pipeline.io import atomic_write_text, load_corpus, source_fingerprint
from datadiet.prompting.compression import compress_batch


class PromptParams(FlowParams):
    """Parameters of ``build_prompts``."""

    pool: str = Field(description="Labelled examples to draw demonstrations from (any reader "
                      "format with `text` and `label` fields).")
    eval_set: str = Field(description="The queries (same format; their labels are carried to "
                          "the prompts file for scoring, never shown in the prompt).")
    out: str = Field(description="Folder for prompts.jsonl and the token report.")
    k: int = Field(4, ge=0, le=64, description="Demonstrations per prompt.")
    strategy: Literal["random"] = Field("random", description="How demonstrations are chosen.")
    seed: int = 0
    instruction: str = Field("", description="Put first in every prompt, kept verbatim.")
    demo_format: str = Field("{text}\nAnswer: {label}", description="One demonstration; "
                             "{text} and {label} are filled in.")
    query_format: str = Field("{text}\nAnswer:", description="The query; {text} is filled in.")
    compress_rate: float = Field(0.5, gt=0.0, le=1.0, description="Keep this fraction of the "
                                 "demonstrations' tokens (1 = no compression).")
    method: Literal["lingua", "selective"] = Field("lingua", description="Compression method.")
    model: str | None = Field(None, description="Scoring model for compression (HF id or "
                              "folder); empty = the offline SmolLM2-135M-Instruct.")
    limit: int | None = Field(None, ge=1, description="Use only the first N queries.")
    text_field: str = "text"
    label_field: str = "label"

    @field_validator("pool", "eval_set")
    @classmethod
    def _exists(cls, value: str) -> str:
        source_fingerprint(value)
        return value

    @model_validator(mode="after")
    def _formats(self) -> PromptParams:
        try:
            self.demo_format.format(text="", label="")
            self.query_format.format(text="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"demo_format/query_format: only {{text}} and {{label}} may be "
                             f"filled in ({exc})") from exc
        return self


def choose_demonstrations(n_pool: int, n_queries: int, k: int, strategy: str,
                          seed: int) -> list[list[int]]:
    """Pool rows for each query (the seam to ``datadiet.prompting.demos``, see module doc)."""
    if strategy != "random":
        raise ValueError(f"unknown strategy {strategy!r}")
    rng = np.random.default_rng(seed)
    return [rng.choice(n_pool, size=min(k, n_pool), replace=False).tolist()
            for _ in range(n_queries)]


def _rows(path: str, text_field: str, label_field: str, limit: int | None = None) -> list[dict]:
    ds = load_corpus(path, text_field=text_field, keep_fields=[label_field]).dataset
    if label_field not in ds.column_names:
        raise ValueError(f"{path}: no {label_field!r} field")
    n = len(ds) if limit is None else min(limit, len(ds))
    return ds.select(range(n)).to_list()


@cached_task(task_run_name="build prompts for {eval_set}")
def build_prompt_file(pool: str, pool_fingerprint: str, eval_set: str, eval_fingerprint: str,
                      settings: dict, out: str) -> dict:
    """Lay out and compress every prompt; write ``prompts.jsonl``; return the token counts."""
    s = settings
    pool_rows = _rows(pool, s["text_field"], s["label_field"])
    queries = _rows(eval_set, s["text_field"], s["label_field"], s["limit"])
    picks = choose_demonstrations(len(pool_rows), len(queries), s["k"], s["strategy"], s["seed"])
    demos = [[s["demo_format"].format(text=pool_rows[i][s["text_field"]],
                                      label=pool_rows[i][s["label_field"]]) for i in rows]
             for rows in picks]
    asked = [s["query_format"].format(text=q[s["text_field"]]) for q in queries]
    compressed = compress_batch(
        [d or [""] for d in demos], rate=s["compress_rate"], questions=asked,
        instruction=s["instruction"] or None, method=s["method"], model=s["model"])
    lines = []
    for query, rows, result in zip(queries, picks, compressed, strict=True):
        lines.append(json.dumps({
            "id": query["id"], "label": query[s["label_field"]], "prompt": result.text,
            "demonstrations": [pool_rows[i]["id"] for i in rows],
            "tokens_before": result.origin_tokens, "tokens_after": result.compressed_tokens,
        }, ensure_ascii=False))
    path = Path(out) / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"prompts": str(path), "tokenizer": compressed[0].tokenizer if compressed else "",
            "tokens_before": [c.origin_tokens for c in compressed],
            "tokens_after": [c.compressed_tokens for c in compressed]}


@flow(name="datadiet-build-prompts", log_prints=True, validate_parameters=True)
def build_prompts(params: PromptParams) -> dict:
    """Few-shot prompts for an evaluation set, compressed; prompts file + token report."""
    settings = params.model_dump(include={"k", "strategy", "seed", "instruction", "demo_format",
                                          "query_format", "compress_rate", "method", "model",
                                          "limit", "text_field", "label_field"})
    result = run_checked(
        stored(build_prompt_file, params), lambda r: Path(r["prompts"]).exists(),
        pool=params.pool, pool_fingerprint=source_fingerprint(params.pool),
        eval_set=params.eval_set, eval_fingerprint=source_fingerprint(params.eval_set),
        settings=settings, out=params.out)
    publish_prompt_report(params, result)
    before, after = sum(result["tokens_before"]), sum(result["tokens_after"])
    return {"prompts": result["prompts"], "n": len(result["tokens_before"]),
            "tokens_before": before, "tokens_after": after}


def publish_prompt_report(params: PromptParams, result: dict) -> None:
    before, after = result["tokens_before"], result["tokens_after"]
    n = len(before)
    table = before_after_rows({
        "prompts": (n, n),
        "tokens (all prompts)": (sum(before), sum(after)),
        "tokens per prompt (mean)": (sum(before) / max(n, 1), sum(after) / max(n, 1)),
        "tokens per prompt (max)": (max(before, default=0), max(after, default=0)),
    })
    plot = histogram({"before compression": before, "after compression": after},
                     "Tokens per prompt", f"tokens ({result['tokenizer']})",
                     Path(params.out) / "report" / "tokens_per_prompt.png")
    sections = [
        f"**{n} prompts** for `{params.eval_set}`: {params.k} demonstrations each from "
        f"`{params.pool}` ({params.strategy}), compressed with {params.method} to rate "
        f"{params.compress_rate} → `{result['prompts']}`.",
        "## Tokens before and after\n\n" + markdown_table(table),
        image_section("Tokens per prompt", plot),
    ]
    publish("datadiet-prompts", "Prompt report: demonstrations and compression", sections, table,
            "Prompt tokens before and after compression")


__all__ = ["PromptParams", "build_prompts", "choose_demonstrations"]
