"""The opset a quantized model needs, reached by onnx's version converter only where the config needs it.

Per-channel weights (``axis`` on QuantizeLinear) need opset 13, 16-bit carriers opset 21
(:func:`.wide.needed_opset` says which and why). A model at or above that opset is left as it is: a
user's opset and IR are never raised without need. Where the converter fails, per-channel 8-bit weights
fall back to per tensor (a warning and ``per_channel_fallback`` in the report) rather than no model at
all; anything else is an :class:`~onnxsq.errors.UnsupportedModelError` naming the reason.
"""

from __future__ import annotations

import dataclasses

import onnx

from ...errors import UnsupportedModelError, first_line
from ...model_io import IR_FOR_OPSET, MAX_IR, default_opset
from ...report import Report
from .config import QuantizeConfig
from .params import check_bits
from .wide import needed_opset


def check_bits_at(model: onnx.ModelProto, cfg: QuantizeConfig) -> None:
    check_bits(cfg.bits, cfg.wbits, default_opset(model))


def ensure_opset(model: onnx.ModelProto, report: Report,
                  cfg: QuantizeConfig) -> tuple[onnx.ModelProto, QuantizeConfig]:
    """``model`` at the opset ``cfg``'s QDQ form needs, and the config that holds there."""
    opset = default_opset(model)
    need, why = needed_opset(cfg)
    check_bits_at(model, cfg)
    if opset >= need:
        return model, cfg
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, need)
    except Exception as exc:  # noqa: BLE001 - the converter raises assorted errors
        if cfg.per_channel and not cfg.int16:  # per-tensor QDQ needs less: quantize per tensor rather than not at all
            report.warnings.append(f"per-channel weights need opset {need}; converting the model from opset {opset} "
                                   f"failed ({first_line(exc)}): weights are quantized per tensor")
            report.summary["per_channel_fallback"] = True
            return ensure_opset(model, report, dataclasses.replace(cfg, per_channel=False))
        raise UnsupportedModelError(f"{why} needs opset {need}; converting the model from opset {opset} "
                                    f"failed: {first_line(exc)}") from None
    converted.ir_version = min(MAX_IR, max(model.ir_version, IR_FOR_OPSET.get(need, model.ir_version)))
    report.summary["opset_raised"] = f"{opset} -> {need} ({why})"
    return converted, cfg
