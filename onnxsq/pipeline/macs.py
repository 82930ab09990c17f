"""Multiply-accumulate counts per layer, and how many of them run in int8.

Math (per sample: the leading output dimension is taken as the batch and counted as 1):

* ``Conv``: ``prod(Y[1:]) * prod(W[1:])`` — every output element is a dot product over
  ``C_in/group × kernel`` inputs.
* ``ConvTranspose``: ``prod(X[1:]) * prod(W[1:])`` — every input element is scattered through
  ``C_out/group × kernel`` weights.
* ``Gemm``: ``prod(Y[1:]) * K`` with ``K`` from B's shape (``B[1]`` when ``transB``, else ``B[0]``).
* ``MatMul``: ``prod(Y[1:]) * K`` with ``K`` the last dimension of A.

Shapes come from onnx shape inference. A layer whose shapes stay unknown (a dynamic spatial size)
gets ``macs=None`` and a reason, and is left out of both sides of the share.

A layer counts as *int8* when its data input and its weight are both outputs of
``DequantizeLinear`` nodes whose quantized input is an integer of 8 bits or fewer: that is the QDQ
pattern onnxruntime fuses into an integer kernel. Anything else (a float weight, a Transpose between
the DequantizeLinear and the layer) runs in float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..graph import attr, node_label

log = logging.getLogger(__name__)

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
NARROW_INTS = {TensorProto.INT8, TensorProto.UINT8}
for _name in ("INT4", "UINT4"):  # onnx >= 1.16
    if hasattr(TensorProto, _name):
        NARROW_INTS.add(getattr(TensorProto, _name))


@dataclass(frozen=True)
class LayerMacs:
    name: str
    op: str
    macs: int | None  # None: shapes unknown
    int8: bool
    reason: str = ""  # why macs is unknown, or why the layer is not int8


@dataclass(frozen=True)
class MacTotals:
    layers: tuple[LayerMacs, ...]

    @property
    def total(self) -> int:
        return sum(layer.macs for layer in self.layers if layer.macs is not None)

    @property
    def int8(self) -> int:
        return sum(layer.macs for layer in self.layers if layer.macs is not None and layer.int8)

    @property
    def int8_share(self) -> float | None:
        return self.int8 / self.total if self.total else None

    @property
    def unknown(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.macs is None]


def _shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, list[int | None]], dict[str, int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - counting MACs is a report, not a gate
        log.debug("shape inference failed (%s); using declared shapes only", exc)
        inferred = model
    shapes: dict[str, list[int | None]] = {}
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    shapes[node.output[0]] = list(attr.t.dims)
                    types[node.output[0]] = attr.t.data_type
    return shapes, types


def _prod(dims: list[int | None]) -> int | None:
    out = 1
    for d in dims:
        if d is None:
            return None
        out *= d
    return out


def layer_macs(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> int | None:
    """MACs of one sample through ``node`` (None when a needed shape is unknown)."""
    def shape(i: int) -> list[int | None] | None:
        return shapes.get(node.input[i]) if len(node.input) > i and node.input[i] else None

    y = shapes.get(node.output[0]) if node.output else None
    x, w = shape(0), shape(1)
    if node.op_type == "Conv":
        if y is None or w is None or len(y) < 2:
            return None
        a, b = _prod(y[1:]), _prod(w[1:])
    elif node.op_type == "ConvTranspose":
        if x is None or w is None or len(x) < 2:
            return None
        a, b = _prod(x[1:]), _prod(w[1:])
    elif node.op_type == "Gemm":
        if y is None or w is None or len(w) != 2:
            return None
        a, b = _prod(y[1:]), w[1] if int(attr(node, "transB", 0)) else w[0]
    elif node.op_type == "MatMul":
        if y is None or x is None or not x:
            return None
        # A 1-D output has no batch dimension to drop.
        a, b = _prod(y[1:]) if len(y) >= 2 else _prod(y), x[-1]
    else:
        return None
    return None if a is None or b is None else int(a) * int(b)


def _through_dq(name: str, producers: dict[str, onnx.NodeProto], types: dict[str, int]) -> str:
    """'' when ``name`` is a DequantizeLinear output of a narrow integer, else why not."""
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return f"{name} does not come from DequantizeLinear"
    elem = types.get(node.input[0])
    if elem is None and len(node.input) > 2 and node.input[2]:
        elem = types.get(node.input[2])  # the zero point has the quantized type
    if elem is None:
        return f"{name}: element type of the quantized tensor unknown"
    if elem not in NARROW_INTS:
        return f"{name} is dequantized from {TensorProto.DataType.Name(elem)}, wider than 8 bits"
    return ""


def count_macs(model: onnx.ModelProto) -> MacTotals:
    """MACs of every Conv/ConvTranspose/Gemm/MatMul of the top-level graph, int8 or not."""
    shapes, types = _shapes_and_types(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    layers = []
    for node in model.graph.node:
        if node.op_type not in MAC_OPS or len(node.input) < 2:
            continue
        macs = layer_macs(node, shapes)
        why = [r for r in (_through_dq(node.input[0], producers, types),
                           _through_dq(node.input[1], producers, types)) if r]
        reason = "shapes unknown" if macs is None else "; ".join(why)
        layers.append(LayerMacs(node_label(node), node.op_type, macs, not why, reason))
    return MacTotals(tuple(layers))
