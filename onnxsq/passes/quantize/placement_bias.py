"""The bias of a compute layer in the placement (:mod:`.placement`): the layer's own bias input, or the
``Add`` of a constant after a MatMul (fused into the layer), made an int32 bias at
``scale_in * scale_w`` — shared biases cloned, a scalar one spread per channel when needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import const_value, is_graph_output, new_constant

if TYPE_CHECKING:
    from .placement import WeightUse


def plan_bias(graph: gs.Graph, node: gs.Node, use: WeightUse, wv: np.ndarray, bias: gs.Tensor, owner: gs.Node,
               idx: int) -> None:
    """Make ``bias`` (input ``idx`` of ``owner``: the layer, or a MatMul's bias Add) ``use``'s int32 bias,
    or note why it stays float. Shared biases are cloned; a scalar one becomes per channel when needed."""
    axis = use.axis
    why = None
    if node.op == "Gemm" and (float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0):
        why = "bias kept float: Gemm alpha/beta != 1"
    bv = const_value(bias)
    if why is None and axis is not None and bv.ndim and bv.shape[-1] != wv.shape[axis]:
        why = "bias kept float: its shape does not follow the weight's channels"
    if why:
        use.notes.append(why)
    else:
        if len(bias.outputs) > 1 or is_graph_output(graph, bias):
            clone = new_constant(graph, f"{bias.name}_{node.name or 'layer'}", bv.astype(np.float32))
            owner.inputs[idx] = clone
            bias = clone
        use.bias = bias.name
        if axis is not None:
            if bv.ndim == 0:
                clone = new_constant(graph, f"{bias.name}_per_channel", np.full(wv.shape[axis], bv, np.float32))
                owner.inputs[idx] = clone
                bias, bv = clone, np.asarray(clone.values)
                use.bias = bias.name
            use.bias_axis = bv.ndim - 1


def bias_add(graph: gs.Graph, node: gs.Node) -> gs.Node | None:
    """The ``Add`` that is the bias of a MatMul with a constant 2-D weight: the MatMul output's only
    reader, adding a float32 constant that varies along the last axis only and does not raise the
    output's rank (known from the input's shape); None otherwise."""
    w, out = const_value(node.inputs[1]), node.outputs[0]
    x_shape = node.inputs[0].shape
    if w is None or w.ndim != 2 or x_shape is None or len(x_shape) < 2 or is_graph_output(graph, out) \
            or len(out.outputs) != 1:
        return None
    add = out.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2 or len(add.outputs) != 1 \
            or add.outputs[0].dtype is None or np.dtype(add.outputs[0].dtype) != np.float32:
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    c = const_value(other) if other is not out else None
    if c is None or c.dtype != np.float32 or c.ndim > len(x_shape):
        return None
    if any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, w.shape[1])):
        return None
    return add


def bias_add_constant(graph: gs.Graph, add: gs.Node, idx: int, channels: int) -> gs.Tensor:
    """The bias Add's constant as an initializer with one value per output channel on its last axis
    (a 1-element or Constant-node constant is replaced by one; the Add computes the same)."""
    t = add.inputs[idx]
    c = np.asarray(const_value(t))
    if isinstance(t, gs.Constant) and c.ndim and c.shape[-1] == channels:
        return t
    full = np.broadcast_to(c, (c.shape[:-1] if c.ndim else ()) + (channels,)).astype(np.float32)
    clone = new_constant(graph, f"{t.name}_bias", full)
    add.inputs[idx] = clone
    return clone
