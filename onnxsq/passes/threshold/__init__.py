"""threshold: magnitude thresholding of weights to a target sparsity (the original's Stage 4).

- :mod:`.magnitude` — the pass (:func:`threshold`): which layers, which fraction, writing the zeros;
- :mod:`.config` — :class:`ThresholdConfig`, its options and defaults (the CLI and recipes read it);
- :mod:`.search` — the numbers: the exact or grid threshold for a fraction under the caps (numpy only).

The names below load their module on first use, so reading the config (the CLI does) imports no graph code.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"ThresholdConfig": "config", "parse_layers": "config", "options_with_original_spelling": "config",
          "threshold": "magnitude", "layer_class": "magnitude", "weight_layout": "magnitude",
          "WeightLayout": "magnitude", "threshold_array": "search"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
