"""``quantize``: power-of-two int8 QDQ (post-training), one folder.

Modules, in the order the pass runs them (:mod:`.ptq` is the pass itself, its phases functions):
``config`` (the options and their defaults; light, the CLI reads it), ``placement`` (which tensors get a
QuantizeLinear/DequantizeLinear pair, which share one scale, why the rest stays float), ``params`` (the
shift of every tensor from its statistics or values, int32 biases), ``bias`` (bias correction),
``insert`` (writing the QDQ pairs and the integer weights), ``eval`` (the per-layer error), ``report``;
``shards`` (``calibrate``: statistics of one shard of the calibration set, which ``quantize(stats=...)``
merges; ``quantize(jobs=N)``).

``onnxsq.passes.quantize.quantize`` and ``QuantizeConfig`` are imported on first use, so that the
CLI reads the config without importing graph code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PASS_NAME", "QuantizeConfig", "calibrate", "quantize"]


def __getattr__(name: str) -> Any:
    if name == "QuantizeConfig":
        from .config import QuantizeConfig

        return QuantizeConfig
    if name == "calibrate":
        from .shards import calibrate

        return calibrate
    if name in ("quantize", "PASS_NAME"):
        from . import ptq

        return getattr(ptq, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
