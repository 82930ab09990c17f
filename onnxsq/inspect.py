"""Per-layer weight statistics: shapes, parameter counts, zero fractions, and QDQ bits/shifts.

``inspect_model(model) -> Report`` (pass name ``inspect``) lists every Conv, ConvTranspose, Gemm and
MatMul node with one candidate each: weight shape, ``params`` (weight + bias elements), ``zeros`` and
``zero_fraction`` of the weight (biases are never counted as sparsity). Nodes whose weight is computed at
run time are listed as skipped with the reason.

Totals (``report.summary``) come from :mod:`onnxsq.sparsity`, so they mean what every other onnxsq
sparsity number means, each with its denominator stated:
  sparsity       = zero weight elements / weight elements of all listed layers (each tensor once),
  conv_sparsity  = the same over Conv/ConvTranspose weights only,
  model_params   = elements of every constant except int64 shape/index tensors and quantization
                   scales/zero points (so BN parameters, biases and integer weights count).

Quantized models (QDQ): a weight reached through ``DequantizeLinear`` (from an integer initializer, or
from ``QuantizeLinear`` of a float one) is reported as the integers the runtime sees; an element is zero
when ``q == zero_point``. ``bits`` comes from the integer type (int8/uint8 → 8), narrowed for a
symmetric weight of fewer bits in that carrier (``--weight-bits 4``: values in [-7, 7] → 4), and ``shift`` is
``-log2(scale)`` when every scale is a power of two (a range "lo..hi" for per-channel scales).
``in_shift``/``out_shift`` are the shifts of the layer's quantized input and output activations (the
output may be quantized after a fused Relu, and after the Clip that narrows fewer-bit activations).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from . import sparsity
from .graph import const_value, import_graph, is_const, node_label
from .model_io import ModelLike, load_model
from .qdq import Dequantized, per_axis, read_qdq
from .report import Report

log = logging.getLogger(__name__)

LAYER_OPS = sparsity.WEIGHT_OPS
# The labels of sparsity.standard_totals, so inspect's totals read like threshold's and training's.
ALL_LABEL = "all layer weights (Conv/ConvTranspose/Gemm/MatMul)"
CONV_LABEL = "conv weights (Conv/ConvTranspose)"
_BITS = {np.dtype(t): np.dtype(t).itemsize * 8 for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32)}


def zero_stats(values: np.ndarray, zero_point: np.ndarray | None = None) -> tuple[int, int]:
    """(elements, zeros) of a weight; with ``zero_point``, an element is zero when it equals it
    (it dequantizes to exactly 0). Float zeros are :func:`onnxsq.sparsity.count_zeros`'s."""
    values = np.asarray(values)
    if zero_point is None:
        return int(values.size), sparsity.count_zeros(values)
    return int(values.size), int(np.count_nonzero(values == zero_point))


@dataclass
class _Quant:
    """A tensor reached through DequantizeLinear: the integers, their zero point and scale."""

    values: np.ndarray | None  # integers as the runtime sees them (None when not constant)
    zero_point: np.ndarray | None
    scale: np.ndarray
    bits: int | None


def _bits(dtype: np.dtype | None) -> int | None:
    """Integer width of a quantized tensor (None for types numpy cannot name, e.g. int4)."""
    if dtype is not None and np.dtype(dtype) in _BITS:
        return _BITS[np.dtype(dtype)]
    return None


def _opt_input(node: gs.Node, i: int) -> gs.Tensor | None:
    """Input ``i`` of ``node``, or None when absent or given as the empty name."""
    if len(node.inputs) <= i or not node.inputs[i].name:
        return None
    return node.inputs[i]


def _dequant_source(qdq: Mapping[str, Dequantized], tensor: gs.Tensor) -> _Quant | None:
    """The QDQ details of ``tensor`` when it is the output of a DequantizeLinear (as :mod:`onnxsq.qdq`
    reads it), else None."""
    dq = qdq.get(tensor.name) if tensor.name else None
    if dq is None:
        return None
    values, zp = dq.values(), dq.zero_point
    if dq.integers is None and values is not None and zp is None and dq.q_zero_point is not None:
        zp = numpy_helper.to_array(dq.q_zero_point)  # QuantizeLinear of a constant: its zero point
    z = per_axis(zp, dq.node, values.ndim) if values is not None and zp is not None else zp
    dtype = zp.dtype if zp is not None else (values.dtype if values is not None else None)
    return _Quant(values, z, dq.scale, _narrowed_bits(_bits(dtype), values, zp))


def _narrowed_bits(bits: int | None, values: np.ndarray | None, zp: np.ndarray | None) -> int | None:
    """A symmetric signed constant of fewer bits than its carrier (a 4-bit weight in int8: values in
    [-7, 7]) reports the bits it uses, by the rule of :func:`onnxsq.params.params_from_model`."""
    if bits is None or values is None or not values.size or not np.issubdtype(values.dtype, np.signedinteger):
        return bits
    if zp is not None and np.any(np.asarray(zp) != 0):
        return bits
    need = int(np.max(np.abs(values.astype(np.int64))))
    return max(2, min(bits, need.bit_length() + 1)) if need else bits


def _shift(scale: np.ndarray) -> int | str | None:
    """-log2(scale) when every scale is a power of two; a range for several different ones."""
    s = np.asarray(scale, np.float64).ravel()
    if s.size == 0 or np.any(s <= 0) or not np.all(np.isfinite(s)):
        return None
    shifts = -np.log2(s)
    if not np.all(shifts == np.round(shifts)):
        return None
    lo, hi = int(shifts.min()), int(shifts.max())
    return lo if lo == hi else f"{lo}..{hi}"


def _activation_quant(qdq: Mapping[str, Dequantized], node: gs.Node) -> tuple[_Quant | None, _Quant | None]:
    """QDQ of the layer's input and of its output (directly or after a Relu)."""
    q_in = _dequant_source(qdq, node.inputs[0]) if node.inputs else None
    q_out = None
    out = node.outputs[0] if node.outputs else None
    readers = list(out.outputs) if out is not None else []
    if len(readers) == 1 and readers[0].op == "Relu":
        readers = list(readers[0].outputs[0].outputs)
    # fewer bits than the carrier: a Clip to the narrower range sits before the QuantizeLinear
    readers = [q for r in readers for q in (r.outputs[0].outputs if r.op == "Clip" and r.outputs else [r])]
    for r in readers:
        if r.op == "QuantizeLinear" and len(r.inputs) > 1 and is_const(r.inputs[1]):
            zp_t = _opt_input(r, 2)
            zp = const_value(zp_t) if zp_t is not None else None
            q_out = _Quant(None, zp, const_value(r.inputs[1]), _bits(zp.dtype if zp is not None else np.uint8))
            break
    return q_in, q_out


def _weight_index(qdq: Mapping[str, Dequantized], node: gs.Node) -> int | None:
    """Which input holds the layer's weight (MatMul: the constant operand)."""
    if node.op == "MatMul":
        for i in (1, 0):
            if len(node.inputs) > i and (is_const(node.inputs[i]) or _dequant_source(qdq, node.inputs[i])):
                return i
        return None
    return 1 if len(node.inputs) > 1 else None


def _bias_size(qdq: Mapping[str, Dequantized], node: gs.Node) -> int:
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
        b = _opt_input(node, 2)
        if b is not None:
            v = const_value(b)
            if v is None:
                dq = _dequant_source(qdq, b)
                v = dq.values if dq is not None else None
            return int(v.size) if v is not None else 0
    return 0


def _model_params(graph: gs.Graph) -> int:
    """Elements of every constant except int64 shape/index tensors and QDQ scales/zero points."""
    qparams = {id(t) for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear") for t in n.inputs[1:]}
    total = 0
    for t in graph.tensors().values():
        if id(t) in qparams or not is_const(t):
            continue
        v = const_value(t)
        if v is not None and v.dtype != np.int64:
            total += int(v.size)
    return total


def _layer(qdq: Mapping[str, Dequantized],
           node: gs.Node) -> tuple[gs.Tensor | None, np.ndarray | None, _Quant | None, str]:
    """(weight tensor, its values as the runtime sees them, their QDQ or None, why not listed or "")."""
    wi = _weight_index(qdq, node)
    w_t = node.inputs[wi] if wi is not None else None
    values = const_value(w_t) if w_t is not None else None
    q = _dequant_source(qdq, w_t) if w_t is not None and values is None else None
    if q is not None:
        values = q.values
    if values is None:
        why = ("no constant operand (activation × activation)" if node.op == "MatMul"
               else "weight is computed at run time, not a constant")
        return w_t, None, q, why
    return w_t, values, q, ""


def _details(qdq: Mapping[str, Dequantized], node: gs.Node, values: np.ndarray, q: _Quant | None) -> dict[str, Any]:
    """The candidate's details: shape, params, zeros, and the QDQ bits/shifts of a quantized layer."""
    count, zeros = zero_stats(values, q.zero_point if q is not None else None)
    details: dict[str, Any] = {
        "weight_shape": [int(d) for d in values.shape],
        "params": count + _bias_size(qdq, node),
        "zeros": zeros,
        "zero_fraction": zeros / count if count else 0.0,
    }
    q_in, q_out = _activation_quant(qdq, node)
    if q is not None:
        details.update(bits=q.bits, shift=_shift(q.scale))
    if q_in is not None:
        details["in_shift"] = _shift(q_in.scale)
    if q_out is not None:
        details["out_shift"] = _shift(q_out.scale)
    return details


def inspect_model(model: ModelLike) -> Report:
    """Per-layer weight shapes, parameter counts and zero fractions, QDQ bits/shifts, and totals."""
    original = load_model(model)
    qdq = read_qdq(original)
    graph = import_graph(original)
    del original  # the graph holds the weights now
    report = Report("inspect")
    seen: dict[str, str] = {}  # weight tensor name -> first layer using it
    stats: list[sparsity.LayerStats] = []  # one per distinct weight tensor, for the totals
    layer_params = quantized = 0
    for node in graph.nodes:
        if node.op not in LAYER_OPS:
            continue
        label = node_label(node)
        w_t, values, q, why = _layer(qdq, node)
        if values is None:
            report.add(label, node.op, "skipped", why)
            continue
        details = _details(qdq, node, values, q)
        quantized += q is not None
        reason = "weight scale is not a power of two" if q is not None and details["shift"] is None else ""
        if w_t.name in seen:
            reason = f"weight shared with {seen[w_t.name]} (counted once in the totals)"
        else:
            seen[w_t.name] = label
            layer_params += details["params"]
            stats.append(sparsity.LayerStats(label, node.op, w_t.name, tuple(values.shape),
                                             int(values.size), details["zeros"]))
        report.add(label, node.op, "listed", reason, **details)
    _totals(report, graph, stats, layer_params, quantized)
    return report


def _totals(report: Report, graph: gs.Graph, stats: list[sparsity.LayerStats], layer_params: int,
            quantized: int) -> None:
    every = sparsity.totals(stats, label=ALL_LABEL)
    conv = sparsity.totals(stats, ops=sparsity.CONV_OPS, label=CONV_LABEL)
    report.summary.update({
        "layers": sum(1 for c in report.candidates if c.changed),
        "layer_params": layer_params,
        "model_params": _model_params(graph),
        "weight_params": every.params,
        "weight_zeros": every.zeros,
        "sparsity": every.zero_fraction,
        "sparsity_denominator": every.label,
        "conv_weight_params": conv.params,
        "conv_weight_zeros": conv.zeros,
        "conv_sparsity": conv.zero_fraction,
        "conv_sparsity_denominator": conv.label,
    })
    if quantized:
        report.summary["quantized_layers"] = quantized
    log.info("inspect: %d layers; %s", report.summary["layers"], every.describe())
