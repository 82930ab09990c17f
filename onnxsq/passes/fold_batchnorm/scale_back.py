"""Positive per-channel scales after a ReLU or a pool moved back into the layer before them (run by
fold-batchnorm after :mod:`.relu_scale`).

Keras puts BatchNormalization after the activation and the pool — ``Conv → Relu → MaxPool → BN → Conv``,
and ``Dense → Relu → BN`` — which tf2onnx writes as ``Mul(a) → Add(b)`` with per-channel constants. The
affine folds (:mod:`.affine`) take only a scale that follows the layer directly; here ops that commute
with a positive per-channel scale stand between. For ``a > 0`` in every channel:
``relu(a y) = a relu(y)`` (LeakyRelu too: both are positively homogeneous), ``maxpool(a y) = a maxpool(y)``
(a window lies within one channel and a positive scale keeps its maximum; padding is -inf), and average
pools are linear. So ``Mul(a)`` after such a chain on a layer ``L`` is the chain on ``L'``, ``L`` with
each output channel's weights and bias scaled by ``a`` (:func:`.edit.rewrite_layer`; Div by ``c`` is Mul
by ``1 / c``): exact up to one rounding per stored value. The Mul goes; the Add after it stays (a shift
does not commute with the ReLU: fold-forward or quantize take it).

Why: quantize puts a quantization point on the pool's output and another on the Mul's, so the block was
rounded twice, and onnxruntime ran ``DQ → Mul → Q`` with a per-channel float constant as a float island
between them (vietcombank_captcha: four Muls, ~0.13 ms of its ~2.4 ms int8 run, profiled). Moved, the
tensors between ``L'`` and the old Mul hold ``a y``, the values the Mul's output held, so they are
quantized on the grid that output was: one rounding and one float op less. The weights are quantized per
output channel, so scaling their channels costs them no precision.

Candidates: a ``Mul`` (or ``Div`` with the variable first) with one constant operand whose variable operand
comes from a Conv/ConvTranspose/Gemm/MatMul through at least one of ``THROUGH``. Refused, with the reason in
the report (entry op ``Mul``/``Div``): a scale that is not positive in every channel (``relu(-y) != -relu(y)``,
and a max turns into a min), a constant that is not float or not per-channel (axis 1; a MatMul's last axis),
division by zero, a tensor of the chain that other nodes read or that is a graph output (they would read
the scaled value), a MaxPool's used Indices output, a MatMul of unknown output rank, and a layer whose
weight or bias is not constant or whose output channels are not the constant's.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, is_graph_output, node_label, producer
from ...report import Report
from . import bn_math as bm
from .affine import _var_index
from .edit import layer_channel_error, rewrite_layer

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops with op(a * y) = a * op(y) for a positive per-channel a (channel axis kept, one data input)
THROUGH = ("Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
MAX_CHAIN = 8


def fold_scales_back_graph(graph: gs.Graph, report: Report, names: UniqueNames) -> None:
    """Apply the rewrite to every candidate of ``graph`` (in place), one report entry per candidate; the
    summary gets ``scale_back_candidates`` / ``scale_back_folded`` when there is any candidate."""
    seen = folded = 0
    for node in [n for n in graph.nodes if n.op in ("Mul", "Div") and n.outputs]:
        var = _var_index(node)
        if var is None or (node.op == "Div" and var != 0) or not node.inputs:
            continue
        found = _chain(node.inputs[var])
        if found is None:
            continue
        layer, ops = found
        seen += 1
        pattern = "→".join([layer.op] + [o.op for o in ops] + [node.op])
        done, text = _move(graph, names, node, var, layer, ops)
        folded += done
        report.add(node_label(node), node.op, "folded" if done else "skipped", text, pattern=pattern,
                   moved_back=True)
    if seen:
        report.summary.update(scale_back_candidates=seen, scale_back_folded=folded)


def _chain(x: gs.Tensor) -> tuple[gs.Node, list[gs.Node]] | None:
    """The layer and the ``THROUGH`` ops (first one first) that produce ``x``, or None (no candidate)."""
    ops: list[gs.Node] = []
    cur = producer(x)
    while cur is not None and cur.op in THROUGH and cur.inputs and len(ops) < MAX_CHAIN:
        ops.insert(0, cur)
        cur = producer(cur.inputs[0])
    if (cur is None or cur.op not in LAYERS or not ops or ops[0].inputs[0] is not cur.outputs[0]
            or x is not ops[-1].outputs[0]):
        return None
    return cur, ops


def _layer_axes(layer: gs.Node) -> tuple[int, int, int] | str:
    """(output rank, channel axis, output channels) of ``layer``, or why they are not known here."""
    w = const_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if w is None:
        return f"the weight of {layer.op} {node_label(layer)} is not constant"
    if layer.op == "Conv":
        return w.ndim, 1, w.shape[0]
    if layer.op == "ConvTranspose":
        return w.ndim, 1, bm.convtranspose_out_channels(w, int(layer.attrs.get("group", 1)))
    if w.ndim != 2:
        return f"{node_label(layer)} has a rank-{w.ndim} weight, not a 2-D matrix"
    if layer.op == "Gemm":
        return 2, 1, w.shape[0] if int(layer.attrs.get("transB", 0)) else w.shape[1]
    shape = layer.outputs[0].shape or layer.inputs[0].shape
    if not shape:
        return f"the output rank of MatMul {node_label(layer)} is unknown"
    return len(shape), len(shape) - 1, w.shape[1]


def _sharing_error(graph: gs.Graph, layer: gs.Node, ops: list[gs.Node]) -> str | None:
    """Why a tensor between ``layer`` and the Mul is read elsewhere (it would read the scaled value)."""
    for node in [layer] + ops:
        t = node.outputs[0]
        if is_graph_output(graph, t):
            return f"{t.name} (output of {node.op} {node_label(node)}) is a graph output"
        if len(t.outputs) != 1:
            return f"{t.name} (output of {node.op} {node_label(node)}) also feeds {len(t.outputs) - 1} other node(s)"
        extra = [o for o in node.outputs[1:] if o.outputs or is_graph_output(graph, o)]
        if extra:
            return f"{node.op} {node_label(node)} has a second output in use ({extra[0].name})"
    return None


def _scale(graph: gs.Graph, mul: gs.Node, var: int, layer: gs.Node, ops: list[gs.Node]) -> np.ndarray | str:
    """The positive per-output-channel scale the Mul/Div applies, or why it cannot move back."""
    axes = _layer_axes(layer)
    if isinstance(axes, str):
        return axes
    rank, axis, channels = axes
    why = _sharing_error(graph, layer, ops)
    if why:
        return why
    c = const_value(mul.inputs[1 - var])
    if not np.issubdtype(c.dtype, np.floating):
        return f"its constant is {c.dtype}, not float"
    vec = bm.channel_vector(c, rank, axis, channels)
    if isinstance(vec, str):
        return vec
    why = bm.affine_step_error(mul.op, vec, True)
    if why:
        return why
    a = vec if mul.op == "Mul" else 1.0 / vec
    if not np.all(a > 0):
        return (f"the scale is not positive in every channel ({int(np.sum(~(a > 0)))} of {channels}): it does "
                f"not commute with {ops[-1].op}")
    return layer_channel_error(layer, channels) or a


def _move(graph: gs.Graph, names: UniqueNames, mul: gs.Node, var: int, layer: gs.Node,
          ops: list[gs.Node]) -> tuple[bool, str]:
    """Rewrite one candidate: (True, what it did), or (False, why not) with nothing changed."""
    a = _scale(graph, mul, var, layer, ops)
    if isinstance(a, str):
        return False, a
    rewrite_layer(graph, names, layer, a, np.zeros_like(a))
    out = mul.outputs[0]
    mul.inputs.clear()
    mul.outputs.clear()
    ops[-1].outputs[0] = out  # the chain's last op now writes the Mul's tensor (its name and readers)
    through = "→".join(o.op for o in ops)
    return True, f"positive scale moved back through {through} into {layer.op} {node_label(layer)}"
