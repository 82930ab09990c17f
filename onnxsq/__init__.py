"""onnxsq: sparse, int8, power-of-two-quantized ONNX models for embedded inference engines.

The public API is imported lazily, so ``import onnxsq`` (and ``onnxsq --help``) stays instant::

    import onnxsq
    model = onnxsq.load_model("net.onnx")
    model, report = onnxsq.fold_batchnorm(model)
    onnxsq.save_model(model, "net.folded.onnx")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .passes import PASSES

# name -> module; the passes come from their registry (onnxsq.passes.PASSES), under their function's name
_API = {
    "load_model": "onnxsq.model_io",
    "save_model": "onnxsq.model_io",
    "compare_models": "onnxsq.verify",
    "random_feeds": "onnxsq.verify",
    "Report": "onnxsq.report",
    **{e: "onnxsq.errors" for e in ("OnnxsqError", "ModelLoadError", "UnsupportedModelError", "InvalidOptionError",
                                    "DataError", "RuntimeMissingError", "VerificationError", "CheckNotRunError")},
    **{p.api_name: p.module for p in PASSES.values()},
    "inspect_model": "onnxsq.inspect",
    "train": "onnxsq.training",
    "TrainConfig": "onnxsq.training.config",
    "evaluate": "onnxsq.evaluation",
    "open_dataset": "onnxsq.data.loader",
    "calibrate": "onnxsq.passes.quantize.shards",  # statistics of a shard, for quantize(stats=[...])
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'onnxsq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
