"""Exact rewrites before placement (:func:`.placement.plan_qdq`), into the forms onnxruntime's integer
kernels take; the float model computes the same values bit for bit:

- a two-input ``Sum`` is an ``Add``: onnxruntime fuses ``DQ → Add → Q`` into QLinearAdd and has no
  integer Sum (light_shufflenet's 13 residual Sums stayed float between a DQ and a Q).
- a channel shuffle ``Reshape (N, C, H, W) → (N, g, C/g, H, W)``, ``Transpose (0, 2, 1, 3, 4)``,
  ``Reshape → (N, C, H, W)`` is a ``Gather`` of the channels: on a quantized tensor onnxruntime's NHWC
  layout pass folds its layout transposes into the shuffle's and runs one 5-D uint8 transpose of a
  general permutation, about 4 ns an element (light_shufflenet: 5.9 of its 11.5 ms); the Gather moves
  whole channel planes and keeps the tensor's scale (it shares it, as every move does).

And after the QDQ pairs are in (:func:`decompose_lrn`, called by :func:`.insert.insert_qdq_graph`, so that
placement and calibration never see its parts), a rewrite that is exact in real arithmetic but not bit for bit
in float: an ``LRN`` (a float island in every quantized model: onnxruntime has no integer kernel for it) is
written as ``Pow(x, 2)`` → a channel-window
``AveragePool`` (``count_include_pad``, on the input unsqueezed to one more axis: the window sum over ``size``,
zero outside the channels, as LRN's definition) → ``· alpha + bias`` → ``d ** -beta`` (``1 / (sqrt(d) sqrt(sqrt d))``
for the usual ``beta = 0.75``, else ``Pow``) → ``x ·``/``x /``: onnxruntime's own LRN kernel is ~2× slower than these
ops (light_zfnet512: 37 of its 65 ms in two LRNs; float 90 → 52 ms with the same rewrite, int8 65 → 28 ms).
Results differ from onnxruntime's LRN by float rounding (≤ 6e-7 relative, measured); opset 13+ only (Unsqueeze's
``axes`` input), input rank known.

And after placement, :func:`bounded_outputs`: the quantized outputs of functions bounded by 1 in
magnitude (Sigmoid, HardSigmoid, Tanh, Softsign), whose format the range sets (uint8 at 2**-8 for
Sigmoid, int8 at 2**-7 for Tanh) instead of calibration, which sees only the samples' part of it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, is_graph_output, new_constant

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


def decompose_lrn(graph: gs.Graph, names: UniqueNames) -> list[str]:
    """Every LRN of ``graph`` (default-domain opset 13+) as its elementwise ops and a channel-window
    AveragePool (the module docstring), in place; what was rewritten, one line each."""
    if (graph.opset or 0) < 13:
        if any(n.op == "LRN" for n in graph.nodes):
            log.info("LRN kept (onnxruntime's kernel): opset %s < 13 (Unsqueeze's axes input)", graph.opset)
        return []
    done = [d for d in (_lrn_decomposed(graph, names, n) for n in list(graph.nodes) if n.op == "LRN") if d]
    if done:
        graph.toposort()
        log.info("LRN for onnxruntime: %s", "; ".join(done))
    return done


def _lrn_decomposed(graph: gs.Graph, names: UniqueNames, lrn: gs.Node) -> str | None:
    """Write ``lrn`` as its elementwise ops and a channel-window AveragePool (the module docstring); what
    was done, or None where the input's rank is unknown."""
    if not lrn.inputs or not lrn.outputs:
        return None
    x, y = lrn.inputs[0], lrn.outputs[0]
    if x.shape is None or len(x.shape) < 3:
        log.info("%s: LRN kept (onnxruntime's kernel): the rank of its input is unknown", lrn.name or y.name)
        return None
    rank, size = len(x.shape), int(lrn.attrs["size"])
    alpha, beta = float(lrn.attrs.get("alpha", 1e-4)), float(lrn.attrs.get("beta", 0.75))
    bias, base = float(lrn.attrs.get("bias", 1.0)), lrn.name or f"LRN_{y.name}"
    lo = (size - 1) // 2

    def const(tag: str, v) -> gs.Constant:
        return gs.Constant(names.fresh(f"{base}_{tag}"), np.asarray(v))

    def op(kind: str, inputs: list, tag: str, out: gs.Variable | None = None, **attrs) -> gs.Variable:
        out = out if out is not None else gs.Variable(names.fresh(f"{base}_{tag}"), dtype=np.float32)
        graph.nodes.append(gs.Node(kind, names.fresh(f"{base}_{tag}"), attrs=attrs, inputs=inputs, outputs=[out]))
        return out

    lrn.inputs.clear()
    lrn.outputs.clear()
    graph.nodes.remove(lrn)
    if _signed_dq(x):  # read twice below: keep one reader, so onnxruntime's x86 S8ToU8 still converts the pair
        x = op("Clip", [x], "input")
    axis = const("axis", np.array([1], np.int64))
    sq = op("Unsqueeze", [op("Pow", [x, const("two", np.float32(2.0))], "square"), axis], "square_5d")
    avg = op("AveragePool", [sq], "window_mean", kernel_shape=[size] + [1] * (rank - 2), count_include_pad=1,
             pads=[lo] + [0] * (rank - 2) + [size - 1 - lo] + [0] * (rank - 2))
    d = op("Add", [op("Mul", [op("Squeeze", [avg, axis], "window_mean_nd"), const("alpha", np.float32(alpha))],
                      "scaled"), const("bias", np.float32(bias))], "denominator")
    if beta == 0.75:
        root = op("Sqrt", [d], "sqrt")
        op("Div", [x, op("Mul", [root, op("Sqrt", [root], "fourth_root")], "power")], "out", y)
    else:
        op("Mul", [x, op("Pow", [d, const("minus_beta", np.float32(-beta))], "power")], "out", y)
    return f"{base}: LRN written as Pow, a channel-window AveragePool and elementwise ops (~2x faster in onnxruntime)"


def _signed_dq(t: gs.Tensor) -> bool:
    """``t`` is the output of a DequantizeLinear of int8 codes (see insert.share_through_clip)."""
    dq = t.inputs[0] if len(t.inputs) == 1 else None
    if dq is None or dq.op != "DequantizeLinear" or len(dq.inputs) < 3:
        return False
    zp = const_value(dq.inputs[2])
    return zp is not None and zp.dtype == np.int8


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
