"""Graph passes: one transformation per module, one kebab-case name per pass.

Every pass is a pure function ``pass(model, ...) -> (new_model, Report)``; the input model is never
mutated. ``PASSES`` maps each name to ``module:function`` so the CLI, reports and logs share it, and
importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

PASSES: dict[str, str] = {
    "fold-constants": "onnxsq.passes.fold_constants:fold_constants",
    "fold-batchnorm": "onnxsq.passes.fold_batchnorm:fold_batchnorm",
    "threshold": "onnxsq.passes.threshold:threshold",
    "quantize": "onnxsq.passes.quantize:quantize",
}


def get_pass(name: str) -> Callable:
    """The pass function registered under ``name``."""
    module, func = PASSES[name].split(":")
    return getattr(importlib.import_module(module), func)
