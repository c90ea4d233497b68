"""The ``build_prompts`` flow: few-shot prompts for an evaluation set, then compressed.

For every query of the evaluation set it selects demonstrations from a labelled pool with
:class:`datadiet.prompting.demos.DemoSelector`, orders them (:class:`~datadiet.prompting.demos.
DemoOrderer`; GlobalE/LocalE through the ICL evaluator's label scorer), lays them out with a
:class:`~datadiet.prompting.demos.PromptTemplate` and compresses the demonstrations (never the
instruction, the query or a label word) through the same assembly call the ICL evaluator uses.
It writes one JSONL row per prompt with its token counts uncompressed and compressed, and
publishes the token report as artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import Field, field_validator

from datadiet.flows.common import (
    FlowParams,
    cached_task,
    flow_run_namer,
    run_checked,
    series_key,
    stored,
    task_run_namer,
)
from datadiet.flows.report import (
    before_after_rows,
    histogram,
    image_section,
    markdown_table,
    publish,
)
from datadiet.pipeline.io import atomic_write_text, load_corpus, source_fingerprint
from datadiet.pipeline.models.tokenizer import load_tokenizer
from datadiet.prompting.demos import DemoOrderer, DemoSelector, load_template
from datadiet.prompting.demos import build_prompts as lay_out_prompts
from datadiet.prompting.icl import ICLEvaluator

Strategy = Literal["random", "bm25", "knn", "mmr", "votek", "dpp"]
Ordering = Literal["as_selected", "similar_last", "random", "globale", "locale"]


Demos = Annotated[int, Field(ge=0, le=64)]
Rate = Annotated[float, Field(gt=0.0, le=1.0)]
Limit = Annotated[int, Field(ge=1)] | None


class PromptParams(FlowParams):
    """The ``build_prompts`` flow's parameters, checked together: both files exist, the
    template loads. The flow builds one from its arguments before any task runs."""

    pool: str
    eval_set: str
    out: str
    k: Demos
    strategy: Strategy
    ordering: Ordering
    balanced: bool
    template: str
    seed: int
    compress_rate: Rate
    model: str | None
    limit: Limit
    text_field: str
    label_field: str

    @field_validator("pool", "eval_set")
    @classmethod
    def _exists(cls, value: str) -> str:
        source_fingerprint(value)
        return value

    @field_validator("template")
    @classmethod
    def _template_loads(cls, value: str) -> str:
        load_template(value, ["0", "1"])  # unknown preset or bad JSON file: fail before running
        return value


def _rows(path: str, text_field: str, label_field: str, limit: int | None = None) -> list[dict]:
    ds = load_corpus(path, text_field=text_field, keep_fields=[label_field]).dataset
    if label_field not in ds.column_names:
        raise ValueError(f"{path}: no {label_field!r} field")
    n = len(ds) if limit is None else min(limit, len(ds))
    return ds.select(range(n)).to_list()


@cached_task(task_run_name=task_run_namer("build prompts for {eval_set}"))
def build_prompt_file(pool: str, pool_fingerprint: str, eval_set: str, eval_fingerprint: str,
                      settings: dict, out: str) -> dict:
    """Select, order, lay out and compress every prompt; write ``prompts.jsonl``."""
    s = settings
    text, label = s["text_field"], s["label_field"]
    pool_rows = _rows(pool, text, label)
    queries = _rows(eval_set, text, label, s["limit"])
    pool_labels = [str(r[label]) for r in pool_rows]
    template = load_template(s["template"], sorted(set(pool_labels)))
    selector = DemoSelector(s["strategy"], s["k"], balanced=s["balanced"], template=template,
                            seed=s["seed"]).fit([r[text] for r in pool_rows], pool_labels)
    asked = [q[text] for q in queries]
    if s["ordering"] in ("globale", "locale"):
        orderer = ICLEvaluator(template, model=s["model"]).orderer(
            s["ordering"], selector.texts, seed=s["seed"])
    else:
        orderer = DemoOrderer(s["ordering"], seed=s["seed"])
    demos = orderer.order_batch(selector.select_batch(asked), asked)
    plain = lay_out_prompts(template, demos, asked)
    compressed = (lay_out_prompts(template, demos, asked, compress_rate=s["compress_rate"],
                                  model=s["model"]) if s["compress_rate"] < 1.0 else plain)
    tokenizer = load_tokenizer(s["model"])

    def count(prompt_text: str) -> int:
        return len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])

    before = [count(p.text) for p in plain]
    after = [count(p.text) for p in compressed]
    lines = [json.dumps({"id": q["id"], "label": q[label], "prompt": p.text,
                         "demonstrations": [pool_rows[d.index]["id"] for d in ds],
                         "tokens_before": b, "tokens_after": a}, ensure_ascii=False)
             for q, p, ds, b, a in zip(queries, compressed, demos, before, after, strict=True)]
    path = Path(out) / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"prompts": str(path), "tokenizer": s["model"] or "SmolLM2-135M-Instruct",
            "tokens_before": before, "tokens_after": after}


@flow(name="datadiet-build-prompts", flow_run_name=flow_run_namer(
    "prompts for {eval_set} from {pool} → {out}/"), log_prints=False, validate_parameters=True)
def build_prompts(
    pool: str,
    eval_set: str,
    out: str,
    k: Demos = 4,
    strategy: Strategy = "knn",
    ordering: Ordering = "as_selected",
    balanced: bool = False,
    template: str = "sentiment",
    seed: int = 0,
    compress_rate: Rate = 0.5,
    model: str | None = None,
    limit: Limit = None,
    text_field: str = "text",
    label_field: str = "label",
    storage: str | None = None,
) -> dict:
    """Few-shot prompts for an evaluation set, compressed; prompts file + token report.

    Args:
        pool: Labelled examples to draw demonstrations from (any reader format with `text` and
            `label` fields).
        eval_set: The queries (same format; their labels are carried to the prompts file for
            scoring, never shown in the prompt).
        out: Folder for prompts.jsonl and the token report.
        k: Demonstrations per prompt.
        strategy: How demonstrations are chosen: random, bm25, knn (KATE), mmr, votek, dpp.
        ordering: How they are ordered; globale/locale score candidate orders with the model
            (slow on CPU).
        balanced: Keep the demonstrations' label mix even.
        template: A preset (sentiment, topic, question, nli) or a JSON file with instruction,
            demo_format, verbalizers.
        seed: Seed of the random choices.
        compress_rate: Keep this fraction of the demonstrations' tokens (1 = no compression).
        model: Model for compression, ordering and token counts (HF id or folder); empty = the
            offline SmolLM2-135M-Instruct.
        limit: Use only the first N queries.
        text_field: The field holding each row's text.
        label_field: The field holding each row's label.
        storage: Folder for the task cache; empty = $DATADIET_FLOW_STORAGE or
            ~/.cache/datadiet/flows.
    """
    params = PromptParams.of_call(build_prompts.fn, locals())
    settings = params.model_dump(include={"k", "strategy", "ordering", "balanced", "template",
                                          "seed", "compress_rate", "model", "limit",
                                          "text_field", "label_field"})
    result = run_checked(
        stored(build_prompt_file, params), lambda r: Path(r["prompts"]).exists(),
        pool=params.pool, pool_fingerprint=source_fingerprint(params.pool),
        eval_set=params.eval_set, eval_fingerprint=source_fingerprint(params.eval_set),
        settings=settings, out=params.out)
    before, after = sum(result["tokens_before"]), sum(result["tokens_after"])
    get_run_logger().info("%d prompts with %d demonstrations each: %s -> %s tokens (%s)",
                          len(result["tokens_before"]), params.k, f"{before:,}", f"{after:,}",
                          result["tokenizer"])
    publish_prompt_report(params, result)
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
        f"`{params.pool}` ({params.strategy}, ordered {params.ordering}, template "
        f"{params.template}), compressed to rate {params.compress_rate} → `{result['prompts']}`.",
        "## Tokens before and after\n\n" + markdown_table(table),
        image_section("Tokens per prompt", plot),
    ]
    publish(series_key("prompts", params.eval_set), "Prompt report: demonstrations and compression", sections, table,
            "Prompt tokens before and after compression")


__all__ = ["PromptParams", "build_prompts"]
