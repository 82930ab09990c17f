"""equalize: cross-layer equalization with power-of-two factors (before quantization).

Math: for a Conv ``y = W1 * x + b1``, an activation ``f`` and a second Conv reading ``f(y)`` through
input channel ``c``, any ``s_c > 0`` with ``f(z / s) = f(z) / s`` gives the same network with
``W1'[c] = W1[c] / s_c``, ``b1'[c] = b1[c] / s_c`` and ``W2'[:, c] = W2[:, c] * s_c``. Choosing
``s_c = sqrt(r1_c / r2_c)`` (``r1_c = max|W1[c]|``, ``r2_c = max|W2[:, c]|``) makes both layers' ranges
per channel equal to ``sqrt(r1_c r2_c)``, so one weight shift per tensor wastes less of its range on
a few large channels (Nagel et al., "Data-free quantization", 2019). Here ``s_c`` is rounded to a power
of two: scaling a float by ``2**k`` is exact, so the equalized model computes the same values as the
original, bit for bit (barring overflow or underflow), not merely up to float rounding. Pairs are
swept in graph order ``ROUNDS`` times (a Conv can be the second layer of one pair and the first of the
next).

Handled: ``Conv`` (any groups, depthwise included) → ``Relu`` | ``LeakyRelu`` | ``PRelu`` with a scalar
slope | nothing → ``Conv``, each intermediate tensor read only by the next node. Refused, with the
reason in the report: activations that are not positively homogeneous (HardSwish, SiLU, Sigmoid, Tanh:
``f(z / s) != f(z) / s``), ``Clip``/``Relu6`` (a per-channel bound is no Clip attribute), a per-channel
PRelu slope, layers whose output is shared or a graph output, non-constant weights, and pairs whose
channels differ.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import UniqueNames, const_value, export_like, import_graph, node_label, sole_consumer
from ..model_io import ModelLike, load_model
from ..report import Report
from .fold_batchnorm.edit import set_const_input

log = logging.getLogger(__name__)

PASS_NAME = "equalize"
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
NOT_HOMOGENEOUS = ("Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu", "Softplus")
ROUNDS = 3
MAX_LOG2 = 16  # factors beyond 2**±16 would only move a dead channel's range around


def equalize(model: ModelLike) -> tuple[onnx.ModelProto, Report]:
    """Equalize every Conv → (homogeneous activation) → Conv pair of ``model``; returns the new model
    (same IR version and opsets) and the report, one candidate per pair."""
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    graph = import_graph(original)
    report = equalize_graph(graph)
    return export_like(graph, original), report


def equalize_graph(graph: gs.Graph) -> Report:
    """:func:`equalize` on an onnx-graphsurgeon graph, in place."""
    report = Report(PASS_NAME)
    names = UniqueNames(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        found = _pair(graph, node)
        if isinstance(found, str):
            if found:
                report.add(node_label(node), "Conv", "skipped", found)
            continue
        pairs.append(found)
    moved = {}
    for _ in range(ROUNDS):
        for first, _act, second in pairs:
            k = _factors(first, second)
            if np.any(k):
                _apply(graph, names, first, second, k)
                moved[id(first)] = moved.get(id(first), 0) + int(np.count_nonzero(k))
    for first, act, second in pairs:
        via = act.op if act is not None else "no activation"
        n = moved.get(id(first), 0)
        report.add(node_label(first), "Conv", "equalized" if n else "skipped",
                   f"with {node_label(second)} through {via}" if n else "ranges already balanced",
                   second=node_label(second), via=via)
    report.summary.update(pairs=len(pairs), equalized=sum(1 for c in report.candidates if c.action == "equalized"))
    log.info("equalize: %d of %d pairs equalized", report.summary["equalized"], len(pairs))
    return report


def _pair(graph: gs.Graph, first: gs.Node) -> tuple[gs.Node, gs.Node | None, gs.Node] | str:
    """(first Conv, activation or None, second Conv), or why not ('' when there is no next layer)."""
    if not _leads_to_conv(first.outputs[0]):
        return ""  # no second layer: not a candidate
    if const_value(first.inputs[1]) is None:
        return "its weight is not constant"
    nxt = sole_consumer(graph, first.outputs[0])
    if nxt is None:
        return "its output is shared or a graph output"
    act = None
    if nxt.op in HOMOGENEOUS or nxt.op in NOT_HOMOGENEOUS:
        why = _homogeneous(nxt)
        if why:
            return why
        act = nxt
        nxt = sole_consumer(graph, act.outputs[0])
        if nxt is None:
            return f"the output of {act.op} {node_label(act)} is shared or a graph output"
    if nxt.op != "Conv":
        return ""
    if nxt.inputs[0] is not (act or first).outputs[0] or const_value(nxt.inputs[1]) is None:
        return f"the next Conv {node_label(nxt)} has a non-constant weight"
    w1, w2 = const_value(first.inputs[1]), const_value(nxt.inputs[1])
    if w1.shape[0] != w2.shape[1] * int(nxt.attrs.get("group", 1)):
        return f"{node_label(first)} has {w1.shape[0]} channels, {node_label(nxt)} reads another count"
    return first, act, nxt


def _leads_to_conv(tensor: gs.Tensor) -> bool:
    """Some reader of ``tensor`` is a Conv, directly or through one activation."""
    for reader in tensor.outputs:
        if reader.op == "Conv":
            return True
        if reader.op in HOMOGENEOUS + NOT_HOMOGENEOUS and any(r.op == "Conv" for r in reader.outputs[0].outputs):
            return True
    return False


def _homogeneous(act: gs.Node) -> str:
    if act.op in ("Relu", "LeakyRelu"):
        return ""
    if act.op == "PRelu":
        slope = const_value(act.inputs[1])
        return "" if slope is not None and slope.size == 1 else \
            f"PRelu {node_label(act)} has a per-channel slope (it would have to move with the channels)"
    if act.op == "Clip":
        return f"Clip {node_label(act)}: a per-channel bound is no Clip attribute (ReLU6 is not rescaled)"
    return f"{act.op} {node_label(act)} is not positively homogeneous (f(z / s) != f(z) / s)"


def _factors(first: gs.Node, second: gs.Node) -> np.ndarray:
    """Per channel ``k`` with ``s = 2**k`` (0 where a range is zero: a dead channel stays as it is)."""
    w1, w2 = const_value(first.inputs[1]), const_value(second.inputs[1])
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1).astype(np.float64)  # a max is exact in any dtype
    r2 = _input_channel_ranges(w2, int(second.attrs.get("group", 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.round(0.5 * np.log2(r1 / r2))
    k[~np.isfinite(k)] = 0
    return np.clip(k, -MAX_LOG2, MAX_LOG2).astype(np.int64)


def _input_channel_ranges(w2: np.ndarray, group: int) -> np.ndarray:
    """``max |W2[o, i]|`` over the outputs that read input channel ``c = g * C/g + i``."""
    m, cg = w2.shape[0], w2.shape[1]
    mg = m // group
    a = np.abs(w2.reshape(group, mg, cg, -1)).max(axis=(1, 3)).astype(np.float64)  # [group, C/g]
    return a.reshape(-1)


def _apply(graph: gs.Graph, names: UniqueNames, first: gs.Node, second: gs.Node, k: np.ndarray) -> None:
    """``W1[c] *= 2**-k_c``, ``b1[c] *= 2**-k_c``, ``W2[:, c] *= 2**k_c`` (exact: powers of two)."""
    w1, w2 = const_value(first.inputs[1]), const_value(second.inputs[1])
    down = np.ldexp(np.ones(k.size), -k)
    set_const_input(graph, first, 1, (w1 * down.reshape((-1,) + (1,) * (w1.ndim - 1)).astype(w1.dtype)),
                    first.inputs[1].name, names)
    if len(first.inputs) > 2 and first.inputs[2].name:
        b1 = const_value(first.inputs[2])
        set_const_input(graph, first, 2, b1 * down.astype(b1.dtype), first.inputs[2].name, names)
    group = int(second.attrs.get("group", 1))
    m, cg = w2.shape[0], w2.shape[1]
    up = np.ldexp(np.ones(k.size), k).reshape(group, 1, cg, *([1] * (w2.ndim - 2)))
    scaled = (w2.reshape(group, m // group, cg, *w2.shape[2:]) * up.astype(w2.dtype)).reshape(w2.shape)
    set_const_input(graph, second, 1, scaled, second.inputs[1].name, names)
