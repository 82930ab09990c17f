"""fold-batchnorm: fold eval-mode BatchNormalization into neighbouring layers and remove the BN nodes.

Math (all in float64, stored back in each tensor's own dtype; see :mod:`onnxsq.passes.bn_math`):
an eval-mode BN over channel axis 1 is ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``. Each BN is tried, in this order:

1. **Backward, into the layer that produces it** — ``Conv`` (any group count, depthwise included,
   any stride/dilation/padding, 1-D/2-D/3-D, with or without bias: ``W'[o] = W[o] s[o]``,
   ``b'[o] = b[o] s[o] + t[o]``), ``ConvTranspose`` (output channel ``g * M/g + j`` is column j of
   group g on weight axis 1), ``Gemm`` (column n of B, or row n when transB=1; ``C`` and ``beta``
   are folded into a new ``C`` with beta = 1) and ``MatMul`` with a constant 2-D weight on a rank-2
   input (the shift becomes an ``Add``). Constant ``Add``/``Sub``/``Mul``/``Div`` nodes between the
   layer and the BN whose constant is per-channel (exporters emit ``ConvTranspose → Add(bias) → BN``)
   are folded through: ``s * (a x + b) + t`` is still one per-channel affine map.
2. **Forward, into the Conv that consumes it** — ``Conv(s x + t)``: ``W'[o,i] = W[o,i] s[c]`` and
   ``b'[o] = b[o] + sum_{i,k} W[o,i,k] t[c]`` with ``c`` the input channel of (o, i). This is exact
   only where every output sees a full window of real input: the Conv has no padding, or ``t`` is
   zero (zero padding of ``s x`` then equals zero padding of ``s x + t``). With padding, border
   outputs would wrongly gain ``t`` from padded positions, so such a BN is not folded forward.
3. **Standalone** — what is left becomes its cheapest exact form, ``Mul`` and/or ``Add`` with
   ``[C, 1, ...]`` broadcast constants (an ``Identity`` when the BN is the identity), unless
   ``standalone="keep"``; it then stays, with the reasons it could not be folded.
4. **Affine folds** (:mod:`onnxsq.passes.fold_affine`, unless ``fold_affine=False``) — constant
   Mul/Add/Sub/Div chains left after a layer (exporters' decomposed BNs and biases, and step 3's
   replacements) go into the layer's weights and bias; a 2-D MatMul + Add becomes a Gemm.

Refused, with a reason in the report: training mode (``training_mode=1``, or the statistics outputs,
which select training mode before opset 14), ``spatial=0`` and pre-opset-7 BN, non-constant parameters, a layer
(or intermediate) output that is also a graph output or feeds other nodes (folding would change what they read),
non-per-channel constants, a MatMul whose output channel is not axis 1, and BN inside control-flow
subgraphs. A weight or bias shared with other nodes is cloned, never changed under them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InvalidOptionError
from ..graph import (
    UniqueNames,
    const_value,
    export_like,
    import_graph,
    is_graph_output,
    new_constant,
    node_label,
    producer,
    sole_consumer,
)
from ..model_io import (
    ModelLike,
    check_model,
    default_opset,
    load_model,
)
from ..report import Report
from . import bn_math as bm
from .bn_graph import TensorTypes, rewrite_layer, set_const_input
from .fold_affine import fold_affine_graph
from .fold_constants import fold_constants_graph, merge_into

log = logging.getLogger(__name__)

PASS_NAME = "fold-batchnorm"
LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
THROUGH = ("Add", "Sub", "Mul", "Div")
MAX_THROUGH = 8  # constant elementwise nodes walked between a layer and its BN


@dataclass
class _Ctx:
    graph: gs.Graph
    report: Report
    types: TensorTypes
    names: UniqueNames  # tensor and node names, reserved once for the whole pass

    def tensor_info(self, tensor: gs.Tensor) -> tuple[int | None, np.dtype | None]:
        return self.types.info(tensor)


def fold_batchnorm(model: ModelLike, *, verify: bool = False, standalone: Literal["affine", "keep"] = "affine",
                   rtol: float | None = None, atol: float | None = None, seed: int = 0,
                   samples: int = 2, fold_affine: bool = True, input_shapes: Mapping[str, Sequence[int]] | None = None
                   ) -> tuple[onnx.ModelProto, Report]:
    """Fold every foldable BatchNormalization in ``model`` (a ModelProto or a path); remove the BN nodes.

    Returns the new model (same IR version and opsets) and a report with one entry per BN. With
    ``verify``, original and result are run in onnxruntime on ``samples`` seeded random inputs and a
    difference beyond ``rtol``/``atol`` (default: by the model's float type) raises VerificationError.
    ``fold_affine``: also fold constant Mul/Add/Sub/Div after layers (:mod:`.fold_affine`; their
    entries are in the same report). ``input_shapes`` (input name -> shape) fixes the random inputs'
    shapes (:mod:`onnxsq.shapes`).
    """
    if standalone not in ("affine", "keep"):
        raise InvalidOptionError(f"standalone must be 'affine' or 'keep', not {standalone!r}")
    if isinstance(model, onnx.ModelProto):
        # Only read (graphsurgeon copies what it changes), so the caller's proto needs no deep copy.
        check_model(model)
        original = model
    else:
        original = load_model(model)
    graph = import_graph(original)
    # weights computed in the graph (ConstantOfShape, Unsqueeze of constants) become weights first
    constants = fold_constants_graph(graph)
    report = fold_batchnorm_graph(graph, opset=default_opset(original), types_from=original, standalone=standalone,
                                  fold_affine=fold_affine)
    merge_into(report, constants)
    result = export_like(graph, original)
    if verify:
        from ..verify import verify_folded

        verify_folded(original, result, report, rtol=rtol, atol=atol, seed=seed, samples=samples,
                      input_shapes=input_shapes)
    return result, report


def fold_batchnorm_graph(graph: gs.Graph, *, opset: int, types_from: onnx.ModelProto | None = None,
                         standalone: Literal["affine", "keep"] = "affine", fold_affine: bool = True) -> Report:
    """:func:`fold_batchnorm` on an onnx-graphsurgeon graph of default-domain ``opset``, in place.

    For passes that hold a graph already (quantize folds first): no export and re-import, so no
    extra copy of the weights. ``types_from``: the model ``graph`` came from, for onnx shape
    inference where a tensor's rank or type is unknown (None: unknown ranks stay unknown). The graph
    is cleaned up (removed BN nodes dropped); the report is :func:`fold_batchnorm`'s. The affine folds
    run last: BN folds (and BN→Mul/Add replacements, which may then fold into a layer) come first.
    """
    if standalone not in ("affine", "keep"):
        raise InvalidOptionError(f"standalone must be 'affine' or 'keep', not {standalone!r}")
    ctx = _Ctx(graph, Report(PASS_NAME), TensorTypes(types_from), UniqueNames(graph))
    pending = []
    bns = [n for n in graph.nodes if n.op == "BatchNormalization"]
    for bn in bns:
        params = _bn_params(ctx, bn, opset)
        if isinstance(params, str):
            ctx.report.add(node_label(bn), bn.op, "skipped", params)
            continue
        reasons = [_fold_backward(ctx, bn, *params)]
        if reasons[0] is not None:
            pending.append((bn, params, reasons))
    # Forward folds after all backward ones: a BN between two layers goes into the one it follows.
    for bn, (s, t), reasons in pending:
        why = _fold_forward(ctx, bn, s, t)
        if why is None:
            continue
        reasons.append(why)
        label = node_label(bn)
        if standalone == "keep":
            ctx.report.add(label, bn.op, "skipped", "; ".join(reasons))
            continue
        why = _to_standalone(ctx, bn, s, t, reasons)
        if why is not None:
            ctx.report.add(label, bn.op, "skipped", "; ".join(reasons + [why]))
    order = {node_label(n): i for i, n in enumerate(bns)}
    ctx.report.candidates.sort(key=lambda c: order.get(c.name, len(order)))  # graph order, not decision order
    _report_subgraphs(ctx, graph)
    affine = fold_affine_graph(graph, opset=opset, types=ctx.types, names=ctx.names) if fold_affine else None
    if affine is None:
        graph.cleanup(remove_unused_graph_inputs=False)  # fold_affine_graph cleans up itself
    _summarize(ctx.report, sum(n.op == "BatchNormalization" for n in graph.nodes))
    if affine is not None:
        ctx.report.candidates.extend(affine.candidates)
        ctx.report.summary.update(affine.summary)
    log.info("fold-batchnorm: %(bn_nodes)d BN, %(folded)d folded, %(replaced)d replaced, %(left)d left",
             ctx.report.summary)
    return ctx.report


def _bn_params(ctx: _Ctx, bn: gs.Node, opset: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) of an eval-mode BN, or why it cannot be treated as one."""
    if opset < 7:
        return f"BatchNormalization of opset {opset} (< 7: is_test/consumed_inputs form) is not supported"
    if int(bn.attrs.get("training_mode", 0)) == 1:
        return "training_mode=1: normalizes with batch statistics, not an inference-time affine map"
    extra = [o.name for o in bn.outputs[1:] if o.name]
    if extra:
        # Before opset 14 the outputs alone select training mode; used or not, Y is then normalized
        # with the batch's statistics, which no constant fold reproduces.
        used = [o.name for o in bn.outputs[1:] if o.name and (o.outputs or is_graph_output(ctx.graph, o))]
        return (f"training form: {len(bn.outputs)} outputs (running/saved statistics"
                f"{', used: ' + ', '.join(used) if used else ''}) mean it normalizes with batch statistics")
    if int(bn.attrs.get("spatial", 1)) == 0:
        return "spatial=0 (per-activation statistics) is not a per-channel affine map"
    if len(bn.inputs) < 5:
        return f"has {len(bn.inputs)} inputs, expected 5"
    values = [const_value(t) for t in bn.inputs[1:5]]
    names = ("scale", "B", "mean", "var")
    for name, v, t in zip(names, values, bn.inputs[1:5]):
        if v is None:
            return f"{name} ({t.name}) is not constant"
    sizes = {v.size for v in values}
    if len(sizes) != 1 or any(v.ndim != 1 for v in values):
        return f"parameter shapes {[list(v.shape) for v in values]} are not four vectors of one length"
    return bm.bn_affine(*values, eps=float(bn.attrs.get("epsilon", 1e-5)))


# --- backward: layer (→ constant Add/Mul ...) → BN --------------------------------------------------

def _fold_backward(ctx: _Ctx, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> str | None:
    """Fold into the producing layer; None when done (and reported), else why not."""
    chain: list[gs.Node] = []  # BN side first
    cur = bn.inputs[0]
    while True:
        node = producer(cur)
        if node is None:
            return f"its input {cur.name} is not produced by a node (a graph input)"
        if node.op not in LAYERS and (node.op not in THROUGH or len(chain) >= MAX_THROUGH):
            return f"its input comes from {node.op} {node_label(node)}, which cannot absorb a per-channel affine map"
        why = _feeds_only(ctx, cur, f"{node.op} {node_label(node)}")
        if why:
            return why
        if node.op in LAYERS:
            break
        consts = [const_value(i) is not None for i in node.inputs]
        if sorted(consts) != [False, True]:
            return f"{node.op} {node_label(node)} before it has no single constant operand"
        chain.append(node)
        cur = node.inputs[consts.index(False)]
    layer = node
    channels = s.size
    rank = _layer_out_rank(ctx, layer)
    if isinstance(rank, str):
        return rank
    a, b = np.ones(channels), np.zeros(channels)
    for node in chain:  # BN side first: composes a * node(x) + b back towards the layer
        var_first = const_value(node.inputs[0]) is None
        c = bm.per_channel(const_value(node.inputs[1 if var_first else 0]), rank, channels)
        if c is None:
            return f"the constant of {node.op} {node_label(node)} is not per-channel"
        if bm.affine_step_error(node.op, c, var_first):
            return f"Div {node_label(node)} is not a division by a non-zero constant"
        a, b = bm.compose_affine(a, b, node.op, c, var_first)
    scale, shift = s * a, s * b + t
    why = rewrite_layer(ctx.graph, ctx.names, layer, scale, shift)
    if why:
        return why
    out = bn.outputs[0]
    bn.outputs.clear()
    bn.inputs.clear()
    for node in chain:
        node.inputs.clear()
        node.outputs.clear()
    if layer.op == "MatMul" and np.any(shift != 0):
        _, dtype = ctx.tensor_info(out)
        mid = gs.Variable(ctx.names.fresh(f"{out.name}_matmul"), dtype=out.dtype, shape=out.shape)
        layer.outputs[0] = mid
        w = const_value(layer.inputs[1])
        shift_c = new_constant(ctx.graph, f"{node_label(bn)}_shift", bm.cast_like(shift, dtype or w.dtype), ctx.names)
        ctx.graph.nodes.append(gs.Node("Add", ctx.names.fresh(f"{node_label(bn)}_add"),
                                       inputs=[mid, shift_c], outputs=[out]))
    else:
        layer.outputs[0] = out
    pattern = "→".join([layer.op] + [n.op for n in reversed(chain)] + ["BN"])
    ctx.report.add(node_label(bn), "BatchNormalization", "folded", f"into {layer.op} {node_label(layer)}",
                   into=node_label(layer), pattern=pattern)
    return None


def _feeds_only(ctx: _Ctx, tensor: gs.Tensor, who: str) -> str | None:
    if is_graph_output(ctx.graph, tensor):
        return f"output {tensor.name} of {who} is also a graph output"
    if len(tensor.outputs) != 1:
        return f"output {tensor.name} of {who} also feeds {len(tensor.outputs) - 1} other node(s)"
    return None


def _layer_out_rank(ctx: _Ctx, layer: gs.Node) -> int | str:
    w = const_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if w is None:
        return f"the weight of {layer.op} {node_label(layer)} is not constant"
    if layer.op in ("Conv", "ConvTranspose"):
        return w.ndim
    if layer.op == "Gemm":
        return 2
    a_rank, _ = ctx.tensor_info(layer.inputs[0])
    if w.ndim != 2 or a_rank != 2:
        return (f"MatMul {node_label(layer)} is not [N, K] x [K, M] (input rank {a_rank}, weight rank {w.ndim}): "
                "its channel axis 1 is not the weight's output axis")
    return 2


# --- forward: BN → Conv -------------------------------------------------------------------------------

def _fold_forward(ctx: _Ctx, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> str | None:
    """Fold into the Conv reading the BN output; None when done (and reported), else why not."""
    y = bn.outputs[0]
    conv = sole_consumer(ctx.graph, y)
    if conv is None:
        return "its output is a graph output or feeds several nodes (no single next Conv)"
    if conv.op != "Conv" or conv.inputs[0] is not y:
        return f"its output feeds {conv.op} {node_label(conv)}, not a Conv's data input"
    w = const_value(conv.inputs[1])
    has_bias = len(conv.inputs) > 2 and conv.inputs[2].name != ""
    bias = const_value(conv.inputs[2]) if has_bias else None
    if w is None or (has_bias and bias is None):
        return f"the next Conv {node_label(conv)} has a non-constant weight or bias"
    group = int(conv.attrs.get("group", 1))
    if w.shape[1] * group != s.size:
        return f"the next Conv {node_label(conv)} reads {w.shape[1] * group} channels, the BN has {s.size}"
    if np.any(t != 0) and _pads_input(conv, w):
        return (f"the next Conv {node_label(conv)} pads its input: the BN shift would be wrong at the borders "
                "(exact only without padding)")
    new_w, new_b = bm.fold_into_next_conv(w, bias, group, s, t)
    set_const_input(ctx.graph, conv, 1, bm.cast_like(new_w, w), conv.inputs[1].name, ctx.names)
    base = conv.inputs[2].name if has_bias else f"{node_label(conv)}_bias"
    set_const_input(ctx.graph, conv, 2, bm.cast_like(new_b, bias if bias is not None else w), base, ctx.names)
    conv.inputs[0] = bn.inputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    ctx.report.add(node_label(bn), "BatchNormalization", "folded", f"forward into Conv {node_label(conv)}",
                   into=node_label(conv), pattern="BN→Conv")
    return None


def _pads_input(conv: gs.Node, w: np.ndarray) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        strides = conv.attrs.get("strides", [1] * (w.ndim - 2))
        return any(k != 1 for k in w.shape[2:]) or any(st != 1 for st in strides)
    if auto_pad == "VALID":
        return False
    return any(p != 0 for p in conv.attrs.get("pads", []))


# --- standalone: BN → Mul/Add -------------------------------------------------------------------------

def _to_standalone(ctx: _Ctx, bn: gs.Node, s: np.ndarray, t: np.ndarray, reasons: list[str]) -> str | None:
    """Replace the BN by its cheapest exact elementwise form; None when done (and reported), else why not."""
    x, y = bn.inputs[0], bn.outputs[0]
    rank, dtype = ctx.tensor_info(x)
    if rank is None or rank < 2:
        return f"kept: the rank of its input {x.name} is unknown, so no broadcast form can be built"
    if dtype is None:
        dtype = const_value(bn.inputs[1]).dtype
    mul, add = bm.standalone_form(s, t, rank)
    label = node_label(bn)
    bn.inputs.clear()
    bn.outputs.clear()
    steps = [("Mul", mul), ("Add", add)]
    steps = [(op, v) for op, v in steps if v is not None] or [("Identity", None)]
    cur = x
    for i, (op, v) in enumerate(steps):
        out = y if i == len(steps) - 1 else gs.Variable(ctx.names.fresh(f"{y.name}_{op.lower()}"), dtype=y.dtype)
        inputs = [cur] if v is None else [cur, new_constant(ctx.graph, f"{label}_{op.lower()}", bm.cast_like(v, dtype),
                                                            ctx.names)]
        ctx.graph.nodes.append(gs.Node(op, ctx.names.fresh(f"{label}_{op.lower()}"), inputs=inputs,
                                       outputs=[out]))
        cur = out
    form = "+".join(op for op, _ in steps)
    ctx.report.add(label, "BatchNormalization", "replaced", f"became {form}; not folded: " + "; ".join(reasons),
                   into=form, pattern="BN→" + form)
    return None


def _report_subgraphs(ctx: _Ctx, graph: gs.Graph, owner: str = "") -> None:
    for node in graph.nodes:
        if owner and node.op == "BatchNormalization":
            ctx.report.add(node_label(node), node.op, "skipped",
                           f"inside a control-flow subgraph of {owner}: subgraphs are not folded")
        for value in node.attrs.values():
            subs = value if isinstance(value, list) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    _report_subgraphs(ctx, sub, owner or f"{node.op} {node_label(node)}")


def _summarize(report: Report, bn_left: int) -> None:
    actions = [c.action for c in report.candidates if c.op == "BatchNormalization"]
    report.summary.update(
        bn_nodes=len(actions),
        folded=actions.count("folded"),
        replaced=actions.count("replaced"),
        left=actions.count("skipped"),
        bn_left=bn_left,
    )
