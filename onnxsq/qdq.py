"""Reading QDQ back out of a model: the one reader behind the parameters file (:mod:`onnxsq.params`)
and the per-layer table (:mod:`onnxsq.inspect`).

``DequantizeLinear(q, scale, zero_point)`` computes ``x = (q - zero_point) * scale``. Its ``q`` is a
constant (an integer initializer or ``Constant``: a weight or bias quantized ahead of time), or the output
of ``QuantizeLinear(x, scale, zero_point) = saturate(round_half_even(x / scale) + zero_point)`` of an
activation or of a float constant, possibly after a ``Clip`` (how onnxsq writes fewer bits than the
carrier type has). Constants are found as :func:`onnxsq.graph.const_value` finds them: initializers and
``Constant`` outputs, also behind ``Identity`` nodes. A DequantizeLinear whose scale is not a constant is
not read (its parameters are not known before the model runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import attr, constant_tensors


@dataclass
class Dequantized:
    """One DequantizeLinear read back (every array as stored in the model)."""

    node: onnx.NodeProto  # the DequantizeLinear
    scale: np.ndarray
    zero_point: np.ndarray | None
    integers: onnx.TensorProto | None = None  # q, when it is a constant
    quantize: onnx.NodeProto | None = None  # the QuantizeLinear computing q, else None
    q_scale: np.ndarray | None = None  # that QuantizeLinear's scale and zero point (when constant)
    q_zero_point: onnx.TensorProto | None = None
    float_constant: np.ndarray | None = None  # what it quantizes, when that is a constant
    clip_max: float | None = None  # a constant-bounded Clip right before it: its max
    float_input: str | None = None  # the float tensor it quantizes (before that Clip)

    @property
    def output(self) -> str:
        return self.node.output[0]

    @property
    def axis(self) -> int | None:
        """The per-axis axis (None for a per-tensor scale)."""
        return int(attr(self.node, "axis", 1)) if np.ndim(self.scale) else None

    def values(self) -> np.ndarray | None:
        """The integers the runtime sees: the constant ``q``, or QuantizeLinear of a float constant
        computed as onnxruntime does; None for an activation."""
        if self.integers is not None:
            return numpy_helper.to_array(self.integers)
        if self.float_constant is not None and self.q_scale is not None:
            zp = numpy_helper.to_array(self.q_zero_point) if self.q_zero_point is not None else None
            return quantize_linear(self.float_constant, self.q_scale, zp, self.quantize)
        return None


def per_axis(arr: np.ndarray | None, node: onnx.NodeProto, ndim: int) -> np.ndarray | None:
    """A per-axis scale/zero point of ``node`` reshaped to broadcast against an ``ndim`` tensor."""
    if arr is None or arr.ndim == 0 or arr.size == 1:
        return None if arr is None else arr.reshape(())
    shape = [1] * ndim
    shape[int(attr(node, "axis", 1)) % ndim] = arr.size
    return arr.reshape(shape)


def quantize_linear(w: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, node: onnx.NodeProto) -> np.ndarray:
    """QuantizeLinear of a constant, as onnxruntime computes it (round half to even, saturate)."""
    dtype = zp.dtype if zp is not None else np.dtype(np.uint8)
    info = np.iinfo(dtype)
    s = per_axis(scale, node, w.ndim)
    z = per_axis(zp, node, w.ndim)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero scale saturates, as in the runtime
        q = np.rint(w.astype(np.float64) / s.astype(np.float64)) + (0 if z is None else z.astype(np.float64))
    return np.clip(np.nan_to_num(q), info.min, info.max).astype(dtype)


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Constants by name; behind an Identity the same, and an integer constant zero-padded for a
    DequantizeLinear (quantize's stem_pad: zero input channels) is read as the integers it stores."""
    consts = constant_tensors(model)
    for node in model.graph.node:  # graph order: chains of Identity resolve in one walk
        if node.op_type == "Identity" and node.input and node.input[0] in consts and node.output:
            consts.setdefault(node.output[0], consts[node.input[0]])
        elif node.op_type == "Pad" and node.input and node.input[0] in consts and _zero_pad(node, consts):
            consts.setdefault(node.output[0], consts[node.input[0]])
    return consts


def _zero_pad(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    """A constant-mode Pad of an integer constant with constant pads and no value (zeros)."""
    return (consts[node.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
            and attr(node, "mode", "constant") in ("constant", b"constant") and len(node.input) == 2
            and node.input[1] in consts)


def read_qdq(model: onnx.ModelProto) -> dict[str, Dequantized]:
    """Every DequantizeLinear with a constant scale, keyed by its output, in graph order."""
    consts = _constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}

    def const(name: str) -> onnx.TensorProto | None:
        return consts.get(name) if name else None

    out: dict[str, Dequantized] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 2 or const(node.input[1]) is None:
            continue
        zp = const(node.input[2]) if len(node.input) > 2 else None
        dq = Dequantized(node, numpy_helper.to_array(const(node.input[1])),
                         numpy_helper.to_array(zp) if zp is not None else None, integers=const(node.input[0]))
        q = producers.get(node.input[0]) if dq.integers is None else None
        if q is not None and q.op_type == "QuantizeLinear":
            dq.quantize = q
            q_scale = const(q.input[1]) if len(q.input) > 1 else None
            dq.q_scale = numpy_helper.to_array(q_scale) if q_scale is not None else None
            dq.q_zero_point = const(q.input[2]) if len(q.input) > 2 else None
            source = const(q.input[0])
            dq.float_constant = numpy_helper.to_array(source) if source is not None else None
            dq.float_input = q.input[0]
            clip = producers.get(q.input[0])
            clip_max = const(clip.input[2]) if clip is not None and clip.op_type == "Clip" and len(clip.input) >= 3 \
                else None
            if clip_max is not None:
                dq.clip_max = float(numpy_helper.to_array(clip_max))
                dq.float_input = clip.input[0]
        out[dq.output] = dq
    return out
