"""Demonstrations for in-context learning: select, order, template.

``DemoSelector`` picks demonstrations from a labelled pool, ``order``/``DemoOrderer`` arranges
them, ``PromptTemplate`` writes them, ``build_prompt`` assembles (and optionally compresses) the
prompt; ``datadiet.prompting.icl`` evaluates the result with the one LM scorer.
"""

from datadiet.prompting.demos.label_scores import LabelScorer, label_probabilities
from datadiet.prompting.demos.ordering import ORDERINGS, DemoOrderer, order
from datadiet.prompting.demos.selection import STRATEGIES, Demo, DemoSelector, vote_k
from datadiet.prompting.demos.templates import (
    PRESET_NAMES,
    Prompt,
    PromptTemplate,
    build_prompt,
    build_prompts,
    load_template,
    preset,
)

__all__ = [
    "ORDERINGS",
    "PRESET_NAMES",
    "STRATEGIES",
    "Demo",
    "DemoOrderer",
    "DemoSelector",
    "LabelScorer",
    "Prompt",
    "PromptTemplate",
    "build_prompt",
    "build_prompts",
    "label_probabilities",
    "load_template",
    "order",
    "preset",
    "vote_k",
]
