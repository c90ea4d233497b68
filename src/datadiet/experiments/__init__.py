"""The saved-compute harness: corpora and pools with planted problems, full-vs-curated runs,
the savings report and its plots, and ``datadiet demo``.

It runs selectors and prompting and trains through :mod:`datadiet.pipeline.stages`, so it sits
above them: ``flows → experiments → prompting / selectors → pipeline → kernels``. Nothing below
imports it.
"""
