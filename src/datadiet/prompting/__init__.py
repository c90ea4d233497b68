"""Prompting: demonstrations (select, order, template), compression, ICL evaluation."""

from datadiet.prompting.compression import (
    BudgetError,
    Compression,
    Compressor,
    PromptCompressor,
    compress,
    compress_batch,
    compress_prompt,
)

__all__ = [
    "BudgetError",
    "Compression",
    "Compressor",
    "PromptCompressor",
    "compress",
    "compress_batch",
    "compress_prompt",
]
