"""Positive per-channel scales moved through a ReLU into the Convs after it (run by fold-batchnorm after
the affine folds).

A chain of constant Mul/Add/Sub/Div that follows no layer (the standalone BN and Caffe ``Scale`` after each
Concat of a DenseNet, pre-activation ResNets: BN → Mul → Add → ReLU → Conv) composes to ``a * x + b`` per
channel. For ``a > 0``, ``relu(a x + b) = a relu(x + b / a)`` (also LeakyRelu: both are positively
homogeneous), and ``Conv(a y) = Conv'(y)`` with the weights of each input channel scaled by ``a``
(``W'[o, i] = W[o, i] a[c]``, ``c`` the input channel of (o, i) in its group): zero padding commutes with a
per-channel scale, so this holds with any padding. The chain becomes one ``Add(b / a)`` (none where
``b = 0``) → ReLU → Conv': exact up to one rounding per stored value, like the other folds. What it saves is
a float ``Mul`` between two quantization points: onnxruntime runs ``DQ → Add → Relu → Q`` as one
QLinearAdd, while ``Mul`` by a per-channel float constant stays a float island (light_densenet121: 124
float Muls).

Candidates: a Relu/LeakyRelu whose input comes from such a chain (each node one constant operand, its output
read only by the next). Refused, with the reason in the report (entry op ``Relu``/``LeakyRelu``): a scale
that is not positive in every channel, a reader of the activation that is not a Conv's data input (or the
activation is a graph output), a Conv with a non-constant or non-float weight or another channel count,
constants that are not per-channel, division by zero, scales that spread more than ``MAX_SPREAD``× across
channels (quantized per tensor after the move, channels of tiny scale would coarsen every other channel's step).
A chain of one ``Add`` (nothing to move) is no candidate.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, is_graph_output, new_constant, node_label, producer
from ...report import Report
from . import bn_math as bm
from .edit import set_const_input

ACTS = ("Relu", "LeakyRelu")
AFFINE = ("Add", "Sub", "Mul", "Div")
MAX_CHAIN = 8
# Moved, channel c reads x + b/a at the one scale of the ReLU output: a channel of tiny a (a dead BN channel,
# gamma ~ 0) makes b/a huge and that scale coarse for all others. A small DenseNet with data-calibrated BN:
# spreads 4-7 without dead channels (+1.2 dB mean over 4 seeds), > 1000 with 5% dead ones (-19 dB if moved).
MAX_SPREAD = 16


def fold_relu_scales_graph(graph: gs.Graph, report: Report, names: UniqueNames) -> None:
    """Apply the rewrite to every candidate of ``graph`` (in place), one report entry per candidate; the
    summary gets ``relu_scale_candidates`` / ``relu_scale_folded`` when there is any candidate."""
    seen = folded = 0
    for act in [n for n in graph.nodes if n.op in ACTS and n.inputs and n.outputs]:
        chain = _chain(graph, act)
        if not chain or (len(chain) == 1 and chain[0][0].op == "Add"):
            continue
        seen += 1
        pattern = "→".join([n.op for n, _ in chain] + [act.op, "Conv"])
        done, text = _fold(graph, names, act, chain)
        folded += done
        report.add(node_label(act), act.op, "folded" if done else "skipped", text, pattern=pattern)
    if seen:
        report.summary.update(relu_scale_candidates=seen, relu_scale_folded=folded)


def _var_index(node: gs.Node) -> int | None:
    if node.op not in AFFINE or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    consts = [const_value(i) is not None for i in node.inputs]
    return consts.index(False) if sorted(consts) == [False, True] else None


def _chain(graph: gs.Graph, act: gs.Node) -> list[tuple[gs.Node, int]]:
    """The constant elementwise nodes right before ``act`` (first one first), with their variable operand's
    index; each output is read only by the next node."""
    chain: list[tuple[gs.Node, int]] = []
    cur = act.inputs[0]
    while len(chain) < MAX_CHAIN:
        node = producer(cur)
        var = _var_index(node) if node is not None else None
        if var is None or len(cur.outputs) != 1 or is_graph_output(graph, cur):
            break
        chain.insert(0, (node, var))
        cur = node.inputs[var]
    return chain


def _readers_error(graph: gs.Graph, act: gs.Node) -> tuple[list[gs.Node], int, int] | str:
    """The Conv readers of ``act``'s output, its channel count and rank, or why they cannot take a scale."""
    y = act.outputs[0]
    if is_graph_output(graph, y):
        return f"its output {y.name} is a graph output"
    convs, channels, rank = [], set(), set()
    for r in y.outputs:
        if r.op != "Conv" or r.inputs[0] is not y or any(i is y for i in r.inputs[1:]):
            return f"its output feeds {r.op} {node_label(r)}, not only Conv data inputs"
        w = const_value(r.inputs[1]) if len(r.inputs) > 1 else None
        if w is None or not np.issubdtype(w.dtype, np.floating):
            return f"the weight of Conv {node_label(r)} is not a float constant"
        channels.add(w.shape[1] * int(r.attrs.get("group", 1)))
        rank.add(w.ndim)
        convs.append(r)
    if not convs:
        return "its output feeds no node"
    if len(channels) != 1:
        return f"the Convs after it read {sorted(channels)} channels"
    return convs, channels.pop(), rank.pop()


def _fold(graph: gs.Graph, names: UniqueNames, act: gs.Node, chain: list[tuple[gs.Node, int]]) -> tuple[bool, str]:
    """Rewrite one candidate: (True, what it did), or (False, why not) with nothing changed."""
    why = _check(graph, act, chain)
    if isinstance(why, str):
        return False, why
    convs, a, shift, rank = why
    dtype = const_value(chain[0][0].inputs[1 - chain[0][1]]).dtype
    for conv in convs:
        w = const_value(conv.inputs[1])
        new_w, _ = bm.fold_into_next_conv(w, None, int(conv.attrs.get("group", 1)), a, np.zeros(a.size))
        set_const_input(graph, conv, 1, bm.cast_like(new_w, w), conv.inputs[1].name, names)
    x = chain[0][0].inputs[chain[0][1]]
    for node, _ in chain:
        node.inputs.clear()
        node.outputs.clear()
    if np.any(shift != 0):
        label = node_label(chain[-1][0])
        out = gs.Variable(names.fresh(f"{act.inputs[0].name}_shifted"), dtype=act.inputs[0].dtype)
        c = new_constant(graph, f"{label}_shift", bm.cast_like(shift.reshape((-1,) + (1,) * (rank - 2)), dtype), names)
        graph.nodes.append(gs.Node("Add", names.fresh(f"{label}_shift"), inputs=[x, c], outputs=[out]))
        x = out
    act.inputs[0] = x
    into = ", ".join(node_label(c) for c in convs)
    return True, (f"positive scale moved through it into Conv {into}; the {len(chain)} node(s) before it became "
                  + ("one Add" if np.any(shift != 0) else "nothing"))


def _check(graph: gs.Graph, act: gs.Node, chain: list[tuple[gs.Node, int]]):
    """(Conv readers, scale a, shift b / a, rank) of a candidate, or why it is refused."""
    readers = _readers_error(graph, act)
    if isinstance(readers, str):
        return readers
    convs, channels, rank = readers
    composed = bm.compose_chain([(node.op, const_value(node.inputs[1 - var]), var == 0, node_label(node))
                                 for node, var in reversed(chain)], rank, channels)  # from the Relu back
    if isinstance(composed, str):
        return composed
    a, b = composed
    if not np.all(a > 0):
        return f"the scale before it is not positive in every channel ({int(np.sum(~(a > 0)))} of {channels})"
    if a.max() > MAX_SPREAD * a.min():
        return (f"the scale before it spreads {a.max() / a.min():.0f}x across channels (> {MAX_SPREAD}): after the "
                "move the channels of small scale (dead BN channels) would set the one scale of the ReLU's output")
    shift = b / a
    if not np.all(np.isfinite(shift)):
        return "the shift over the scale is not finite in every channel"
    return convs, a, shift, rank
