"""Prompt compression: fit long prompts into a token budget, exactly, offline.

``compress(prompt, rate=0.5)`` keeps the informative half of a prompt; ``compress_batch`` does
many at once; ``compress_prompt`` is a drop-in for llmlingua's method of the same name. The
options every call shares are one :class:`CompressOptions`. Methods:
``lingua`` (LLMLingua family, the default), ``selective`` (Selective Context), ``llmlingua`` (the
reference package, as an optional adapter).
"""

from datadiet.prompting.compression.api import (
    Compression,
    CompressOptions,
    Compressor,
    PromptCompressor,
    compress,
    compress_batch,
    compress_prompt,
)
from datadiet.prompting.compression.budget import BudgetError, TokenCounter
from datadiet.prompting.compression.lingua import LinguaOptions
from datadiet.prompting.compression.protect import PRESETS
from datadiet.prompting.compression.selective import SelectiveOptions

__all__ = [
    "PRESETS",
    "BudgetError",
    "CompressOptions",
    "Compression",
    "Compressor",
    "LinguaOptions",
    "PromptCompressor",
    "SelectiveOptions",
    "TokenCounter",
    "compress",
    "compress_batch",
    "compress_prompt",
]
