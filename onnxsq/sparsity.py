"""Sparsity statistics: how many weights are exactly zero, per layer and in total.

Shared by ``onnxsq threshold``, ``onnxsq inspect``, training's ``display_sparsity`` and the pipeline
tables, so every number onnxsq prints about sparsity means the same thing. Every total states its
denominator, because the original tool's logs were misread when fully connected weights crept into
it: a total is always "zeros / params over <these tensors>".

A layer's *weight* is input 1 of Conv, ConvTranspose, Gemm or MatMul when it is a constant (an
initializer or a ``Constant`` node), or the constant quantized input of a ``DequantizeLinear`` feeding
it (then a weight is zero when it equals its zero point, i.e. dequantizes to exactly 0).
Only the top-level graph is read; a weight tensor shared by several nodes is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import constant_tensors, node_label

WEIGHT_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CONV_OPS: tuple[str, ...] = ("Conv", "ConvTranspose")
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class LayerStats:
    """Zero count of one layer's weight tensor."""

    name: str  # node name (or op(output) for unnamed nodes)
    op: str
    weight: str  # the constant tensor's name
    shape: tuple[int, ...]
    params: int
    zeros: int

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.params if self.params else 0.0


@dataclass(frozen=True)
class Totals:
    """Zeros over a stated set of tensors (``label`` names the denominator)."""

    label: str
    params: int
    zeros: int
    tensors: int

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    def describe(self) -> str:
        """E.g. ``80.12% zero (18,838,016 of 23,512,128 weights; conv weights, 53 tensors)``."""
        return (f"{100 * self.zero_fraction:.2f}% zero ({self.zeros:,} of {self.params:,}; "
                f"{self.label}, {self.tensors} tensor{'s' if self.tensors != 1 else ''})")

    def as_dict(self) -> dict[str, object]:
        return {"denominator": self.label, "zeros": self.zeros, "params": self.params,
                "tensors": self.tensors, "zero_fraction": self.zero_fraction}


def count_zeros(values: np.ndarray) -> int:
    """Exact zeros (``-0.0`` counts; NaN does not)."""
    values = np.asarray(values)
    return int(values.size - np.count_nonzero(values))


def _dequantized_zeros(
    node: onnx.NodeProto, consts: Mapping[str, onnx.TensorProto]
) -> tuple[str, np.ndarray, int] | None:
    """(name, quantized values, zeros) of a DequantizeLinear with a constant input, else None."""
    q = consts.get(node.input[0])
    if q is None:
        return None
    values = numpy_helper.to_array(q)
    zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        return node.input[0], values, count_zeros(values)
    zpv = numpy_helper.to_array(zp)
    if zpv.size > 1:  # per-axis zero points: broadcast along the quantization axis
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        shape[axis] = zpv.size
        zpv = zpv.reshape(shape)
    return node.input[0], values, int(np.count_nonzero(values == zpv))


def weight_stats(model: onnx.ModelProto, ops: Iterable[str] = WEIGHT_OPS) -> list[LayerStats]:
    """One :class:`LayerStats` per distinct constant weight of the ``ops`` nodes, in graph order."""
    ops = set(ops)
    consts = constant_tensors(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    seen: set[str] = set()
    stats = []
    for node in model.graph.node:
        if node.op_type not in ops or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in consts:
            values = numpy_helper.to_array(consts[name])
            zeros = count_zeros(values)
        else:
            dq = producers.get(name)
            found = _dequantized_zeros(dq, consts) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if found is None:
                continue
            name, values, zeros = found
        if name in seen:
            continue
        seen.add(name)
        stats.append(LayerStats(node_label(node), node.op_type, name, tuple(values.shape), int(values.size), zeros))
    return stats


def array_stats(arrays: Mapping[str, np.ndarray], op: str = "") -> list[LayerStats]:
    """Stats for named arrays (e.g. training's checkpoint parameters); the name is used for both
    layer and weight."""
    return [LayerStats(name, op, name, tuple(np.shape(a)), int(np.size(a)), count_zeros(a))
            for name, a in arrays.items()]


def totals(stats: Iterable[LayerStats], *, ops: Iterable[str] | None = None, label: str | None = None) -> Totals:
    """Sum over ``stats`` (only the ``ops`` layers when given); ``label`` names the denominator."""
    chosen = [s for s in stats if ops is None or s.op in set(ops)]
    if label is None:
        label = "weights of " + "/".join(sorted(set(ops))) if ops is not None else "all layer weights"
    return Totals(label, sum(s.params for s in chosen), sum(s.zeros for s in chosen), len(chosen))


def parameter_totals(model: onnx.ModelProto) -> Totals:
    """Zeros over every float constant of the top-level graph (weights, biases, BatchNorm, ...)."""
    params = zeros = count = 0
    for t in constant_tensors(model).values():
        if t.data_type not in _FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(t)
        params += values.size
        zeros += count_zeros(values)
        count += 1
    return Totals("all float parameters", params, zeros, count)


def standard_totals(model: onnx.ModelProto, stats: list[LayerStats] | None = None) -> list[Totals]:
    """The denominators onnxsq reports everywhere: conv weights, all layer weights, all parameters."""
    stats = weight_stats(model) if stats is None else stats
    return [totals(stats, ops=CONV_OPS, label="conv weights (Conv/ConvTranspose)"),
            totals(stats, label="all layer weights (Conv/ConvTranspose/Gemm/MatMul)"),
            parameter_totals(model)]
