"""Quantization parameters per tensor, and the parameters file (``--params-out`` / ``--params``).

The file plays the part of the original's ``snapshot_log`` / ``insert_quantization_param``: one entry
per quantized tensor with its bit width, signedness, shift (fractional bits: ``x = q * 2**-shift``),
the observed range and the estimator that chose it; a bias also its ``correction`` (bias correction:
the per-channel values subtracted from the float bias before it was quantized), so that a model
quantized from the file alone is the same model. Reading a file back lets a later run skip
calibration for those tensors (QAT writes the same format)::

    {"format": "onnxsq-quant-params", "version": 1,
     "tensors": {"conv1.out": {"kind": "activation", "bits": 8, "signed": false, "shift": 5,
                               "observed_range": [0.0, 6.9], "estimator": "minmax"},
                 "conv1.weight": {"kind": "weight", "bits": 8, "signed": true, "shift": [7, 6, ...],
                                  "axis": 0, ...}}}

``shift`` is an integer, or a list (one per channel along ``axis``) for per-channel weights and biases.
:func:`params_from_model` reads the same information back out of a QDQ model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .calibration import pow2
from .errors import DataError
from .qdq import Dequantized, read_qdq
from .report import write_json

FORMAT = "onnxsq-quant-params"
# an aligned graph output's dequantized tensor: quantize.align hands the output back by a Mul after it
ALIGNED_SUFFIX = "/aligned"
VERSION = 1
KINDS = ("activation", "weight", "bias")


@dataclass
class TensorQuant:
    """How one tensor is quantized: ``q = clip(round(x * 2**shift))`` in ``bits`` bits."""

    name: str
    kind: str  # activation | weight | bias
    bits: int
    signed: bool
    shift: int | list[int]
    axis: int | None = None
    observed_range: tuple[float, float] | None = None
    estimator: str | None = None
    correction: list[float] | None = None  # bias only: subtracted from the float bias (bias correction)

    @property
    def per_channel(self) -> bool:
        return isinstance(self.shift, list)

    @property
    def shift_array(self) -> np.ndarray:
        return np.asarray(self.shift, dtype=np.int64)

    @property
    def scale(self) -> np.ndarray:
        """``2**-shift`` as float32 (a scalar array per-tensor)."""
        return np.asarray(pow2.scale_of(self.shift_array), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "bits": self.bits, "signed": self.signed, "shift": self.shift}
        if self.axis is not None:
            d["axis"] = self.axis
        if self.observed_range is not None:
            d["observed_range"] = [float(self.observed_range[0]), float(self.observed_range[1])]
        if self.estimator is not None:
            d["estimator"] = self.estimator
        if self.correction is not None:
            d["correction"] = [float(v) for v in self.correction]
        return d

    @classmethod
    def from_dict(cls, name: str, d: Any, *, where: str = "parameters") -> TensorQuant:
        if not isinstance(d, dict):
            raise DataError(f"{where}: entry {name!r} must be an object")
        try:
            kind = str(d.get("kind", "activation"))
            bits, signed, shift = int(d["bits"]), d["signed"], d["shift"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: entry {name!r} needs bits, signed and shift ({exc})") from None
        if kind not in KINDS:
            raise DataError(f"{where}: entry {name!r}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not isinstance(signed, bool):
            raise DataError(f"{where}: entry {name!r}: signed must be true or false")
        if not 2 <= bits <= 32:
            raise DataError(f"{where}: entry {name!r}: bits must be in 2..32, not {bits}")
        if isinstance(shift, list):
            if not shift or not all(isinstance(s, int) and not isinstance(s, bool) for s in shift):
                raise DataError(f"{where}: entry {name!r}: shift must be an integer or a list of integers")
        elif not isinstance(shift, int) or isinstance(shift, bool):
            raise DataError(f"{where}: entry {name!r}: shift must be an integer or a list of integers")
        rng = d.get("observed_range")
        axis = d.get("axis")
        corr = d.get("correction")
        if corr is not None and (not isinstance(corr, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in corr)):
            raise DataError(f"{where}: entry {name!r}: correction must be a list of numbers")
        return cls(name, kind, bits, signed, shift, None if axis is None else int(axis),
                   None if rng is None else (float(rng[0]), float(rng[1])), d.get("estimator"),
                   None if corr is None else [float(v) for v in corr])


def to_json_dict(params: dict[str, TensorQuant]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "tensors": {n: p.to_dict() for n, p in params.items()}}


def write_params(params: dict[str, TensorQuant], path: str | os.PathLike) -> Path:
    """Write the parameters file (atomically)."""
    return write_json(to_json_dict(params), path)


def read_params(path: str | os.PathLike) -> dict[str, TensorQuant]:
    """Read a parameters file; a bad file is a one-line :class:`DataError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such parameters file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON parameters file ({exc})") from None
    return parse_params(data, where=str(path))


def parse_params(data: Any, *, where: str = "parameters") -> dict[str, TensorQuant]:
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tensors"), dict):
        raise DataError(f"{where}: not an onnxsq parameters file (expected \"format\": \"{FORMAT}\" and "
                        "a \"tensors\" object)")
    if int(data.get("version", 0)) > VERSION:
        raise DataError(f"{where}: parameters file version {data.get('version')} is newer than this onnxsq "
                        f"reads ({VERSION})")
    return {str(n): TensorQuant.from_dict(str(n), d, where=where) for n, d in data["tensors"].items()}


def _bits_signed(elem_type: int, qmin: int | None = None, qmax: int | None = None) -> tuple[int, bool]:
    signed = elem_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32)
    bits = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
            onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT32: 32}.get(elem_type, 0)
    return bits, signed


def params_from_model(model: onnx.ModelProto) -> dict[str, TensorQuant]:
    """Bits, signedness and shift of every DequantizeLinear in a QDQ model, keyed by the float tensor
    (read by :func:`onnxsq.qdq.read_qdq`, the reader :mod:`onnxsq.inspect` uses too).

    The key is the dequantized tensor's name for activations (the graph input's for an input), the
    integer initializer's name (without its ``_quantized`` suffix) for constants. Non-power-of-two
    scales are skipped. A Clip right before QuantizeLinear narrows the bit width (how onnxsq writes
    fewer than 8 bits).
    """
    graph_inputs, outputs = {i.name for i in model.graph.input}, {o.name for o in model.graph.output}
    again = _requantized(model)
    out: dict[str, TensorQuant] = {}
    for dq in read_qdq(model).values():
        if not pow2.is_power_of_two(dq.scale) or (dq.integers is None and dq.float_input in again):
            continue
        shift = pow2.shift_of(dq.scale)
        shift_value = shift.tolist() if np.ndim(shift) else int(shift)
        if dq.integers is not None:
            p = _constant_params(dq, shift_value)
        elif dq.quantize is not None:
            p = _activation_params(dq, shift_value, graph_inputs)
        else:
            continue
        if p.name.endswith(ALIGNED_SUFFIX) and p.name[:-len(ALIGNED_SUFFIX)] in outputs:
            p.name = p.name[:-len(ALIGNED_SUFFIX)]  # an aligned graph output, handed back by a Mul (quantize.align)
        out[p.name] = p
    return out


def _requantized(model: onnx.ModelProto) -> set[str]:
    """Tensors that are a DequantizeLinear's output read through unbounded Clips (or a Pad): quantized again, they
    are the same integers for a layer that reads a shared tensor (quantize's insert.requantize_for_layers), or
    the same integers with zero channels beside them (quantize's stem_pad), no tensor."""
    prod = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for name, node in prod.items():
        cur = node
        if node.op_type == "Pad" and _of_graph_input(prod, prod.get(node.input[0]), model.graph.input):
            cur = prod.get(node.input[0])
        while cur is not None and cur.op_type == "Clip" and len(cur.input) == 1:
            cur = prod.get(cur.input[0])
        if cur is not node and cur is not None and cur.op_type == "DequantizeLinear":
            out.add(name)
    return out


def _of_graph_input(prod: dict, dq: onnx.NodeProto | None, inputs) -> bool:
    """Whether ``dq`` is the DequantizeLinear of a graph input's QuantizeLinear."""
    q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q is not None and q.op_type == "QuantizeLinear" and q.input[0] in {i.name for i in inputs}


def _constant_params(dq: Dequantized, shift: int | list[int]) -> TensorQuant:
    t = dq.integers
    bits, signed = _bits_signed(t.data_type)
    q = numpy_helper.to_array(t)
    if dq.zero_point is not None and np.any(dq.zero_point != 0):  # signed integers on a uint8 carrier (offset)
        q, signed = q.astype(np.int64) - dq.zero_point, True
    kind = "bias" if t.data_type == onnx.TensorProto.INT32 else "weight"
    src = t.name if t.name.endswith("_quantized") else dq.node.input[0]  # the stored integers (behind a Pad too)
    name = src[: -len("_quantized")] if src.endswith("_quantized") else src
    if kind == "weight" and q.size:
        # a symmetric weight of fewer bits is stored in an 8-bit carrier: report what it uses
        need = int(np.max(np.abs(q.astype(np.int64))))
        bits = max(2, min(bits, int(need).bit_length() + 1)) if need else bits
    top = float(np.max(dq.scale))
    rng = (float(q.min()) * top, float(q.max()) * top) if q.size else None
    return TensorQuant(name, kind, bits, signed, shift, dq.axis, None if kind == "bias" else rng)


def _activation_params(dq: Dequantized, shift: int | list[int], graph_inputs: set[str]) -> TensorQuant:
    elem = dq.q_zero_point.data_type if dq.q_zero_point is not None else onnx.TensorProto.UINT8
    bits, signed = _bits_signed(elem)
    if dq.q_zero_point is not None and np.any(numpy_helper.to_array(dq.q_zero_point) != 0):
        signed = True  # a signed tensor carried as uint8 at zero point 128 (quantize --carrier uint8)
    if dq.clip_max is not None:
        levels = int(round(dq.clip_max / float(dq.scale))) + 1
        bits = max(2, int(levels - 1).bit_length() + (1 if signed else 0))
    # insert_qdq keeps a produced tensor's name on the DequantizeLinear output; a graph input keeps its own
    key = dq.float_input if dq.float_input in graph_inputs else dq.output
    return TensorQuant(key, "activation", bits, signed, shift, dq.axis)
