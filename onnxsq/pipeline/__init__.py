"""``onnxsq pipeline``: run the whole flow from a recipe file, with caching, resume and summary tables.

    from onnxsq.pipeline import load_recipe, run_pipeline
    result = run_pipeline("sample_models/recipes/digits.toml", "demo-out")
    for row in result.rows:
        print(row.stage, row.metric, row.conv_sparsity, row.int8_share)

Modules: ``recipe`` (parse + validate), ``stages`` (the table mapping recipe keys to library calls),
``runner`` (stages in order, cache, resume), ``summary`` (table data, JSON, Markdown), ``macs`` (MACs
per layer and the int8 share), ``charts`` (PNG), ``sources`` (built-in data sets).
"""

from __future__ import annotations

from .recipe import Recipe, StageSpec, load_recipe
from .runner import PipelineResult, run_pipeline
from .summary import StageRow

__all__ = ["PipelineResult", "Recipe", "StageRow", "StageSpec", "load_recipe", "run_pipeline"]
