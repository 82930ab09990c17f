"""Exact rewrites before placement (:func:`.placement.plan_qdq`), into the forms onnxruntime's integer
kernels take; the float model computes the same values bit for bit:

- a two-input ``Sum`` is an ``Add``: onnxruntime fuses ``DQ → Add → Q`` into QLinearAdd and has no
  integer Sum (light_shufflenet's 13 residual Sums stayed float between a DQ and a Q).
- a channel shuffle ``Reshape (N, C, H, W) → (N, g, C/g, H, W)``, ``Transpose (0, 2, 1, 3, 4)``,
  ``Reshape → (N, C, H, W)`` is a ``Gather`` of the channels: on a quantized tensor onnxruntime's NHWC
  layout pass folds its layout transposes into the shuffle's and runs one 5-D uint8 transpose of a
  general permutation, about 4 ns an element (light_shufflenet: 5.9 of its 11.5 ms); the Gather moves
  whole channel planes and keeps the tensor's scale (it shares it, as every move does).

And after placement, :func:`bounded_outputs`: the quantized outputs of functions bounded by 1 in
magnitude (Sigmoid, HardSigmoid, Tanh, Softsign), whose format the range sets (uint8 at 2**-8 for
Sigmoid, int8 at 2**-7 for Tanh) instead of calibration, which sees only the samples' part of it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import const_value, is_graph_output, new_constant

log = logging.getLogger(__name__)

SHUFFLE_PERM = [0, 2, 1, 3, 4]


def rewrite_forms(graph: gs.Graph) -> list[str]:
    """Rewrite ``graph`` in place (see the module docstring); what was rewritten, one line each."""
    done = []
    for node in list(graph.nodes):
        if node.op == "Sum" and len(node.inputs) == 2:
            node.op = "Add"
            done.append(f"{node.name or 'Sum'}: a two-input Sum written as Add (QLinearAdd)")
    for node in list(graph.nodes):
        shuffle = _shuffle(graph, node)
        if shuffle is not None:
            done.append(_to_gather(graph, *shuffle))
    if done:
        log.info("forms for onnxruntime's integer kernels: %s", "; ".join(done))
    return done


def _only_reader(graph: gs.Graph, t: gs.Tensor, op: str) -> gs.Node | None:
    if is_graph_output(graph, t) or len(t.outputs) != 1 or t.outputs[0].op != op:
        return None
    return t.outputs[0]


def _shape(t: gs.Tensor) -> list[int] | None:
    s = t.shape
    return list(s) if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None


def _shuffle(graph: gs.Graph, first: gs.Node) -> tuple[gs.Node, gs.Node, gs.Node, int] | None:
    """(first Reshape, Transpose, second Reshape, groups) of a channel shuffle starting at ``first``."""
    if first.op != "Reshape" or not first.inputs or not first.outputs:
        return None
    x, mid = first.inputs[0], first.outputs[0]
    xs, ms = _shape(x), _shape(mid)
    if xs is None or ms is None or len(xs) != 4 or len(ms) != 5:
        return None
    if ms[0] != xs[0] or ms[1] * ms[2] != xs[1] or ms[3:] != xs[2:]:
        return None
    tr = _only_reader(graph, mid, "Transpose")
    if tr is None or list(tr.attrs.get("perm", [])) != SHUFFLE_PERM:
        return None
    second = _only_reader(graph, tr.outputs[0], "Reshape")
    if second is None or _shape(second.outputs[0]) != xs:
        return None
    return first, tr, second, ms[1]


def _to_gather(graph: gs.Graph, first: gs.Node, tr: gs.Node, second: gs.Node, groups: int) -> str:
    x, out = first.inputs[0], second.outputs[0]
    c = x.shape[1]
    per = c // groups
    idx = np.array([(j % groups) * per + j // groups for j in range(c)], dtype=np.int64)
    name = f"{tr.name or 'shuffle'}_as_gather"
    indices = new_constant(graph, f"{name}_indices", idx)
    gather = gs.Node("Gather", name, attrs={"axis": 1}, inputs=[x, indices], outputs=[])
    for n in (first, tr, second):
        n.outputs.clear()
        n.inputs.clear()
    gather.outputs.append(out)
    drop = {id(first), id(tr), id(second)}
    at = next(k for k, n in enumerate(graph.nodes) if n is first)
    graph.nodes[:] = [n for n in graph.nodes if id(n) not in drop]
    graph.nodes.insert(at, gather)
    return f"{name}: a channel shuffle of {groups} groups written as one Gather of the channels"


BOUNDED = {"Sigmoid": False, "HardSigmoid": False, "Tanh": True, "Softsign": True}  # op → signed range


def bounded_outputs(graph: gs.Graph, quantized) -> dict[str, bool]:
    """The ``quantized`` tensors that a ``BOUNDED`` function writes → whether its range is signed."""
    return {n.outputs[0].name: BOUNDED[n.op] for n in graph.nodes
            if n.op in BOUNDED and n.outputs and n.outputs[0].name in quantized}


def pad_keeps_zero(node: gs.Node) -> bool:
    """A Pad that pads with zero (or does not pad with a value): it runs on integers unchanged."""
    if node.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return True
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        v = const_value(node.inputs[2])
        return v is not None and bool(np.all(v == 0))
    return float(node.attrs.get("value", 0.0)) == 0.0
