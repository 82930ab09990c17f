"""Affine folds (run by fold-batchnorm after its BN rules): constant Mul/Add/Sub/Div after a layer go
into the layer's weights and bias.

Math (float64, stored back in each tensor's own dtype; :mod:`.bn_math`): a chain of
constant elementwise ops on a layer's output is one per-channel affine map ``y = a * L(x) + b``,
composed from the last op back to the layer (``a * (u * c) + b``: ``a' = a c``; ``a * (u + c) + b``:
``b' = b + a c``; ``u - c`` and ``c - u`` (which negates ``a``); ``u / c`` for ``c != 0``). Then
``a * L(x) + b`` is ``L'(x)`` with every output channel's weights scaled by ``a`` and the bias
``a * bias + b`` — exact up to one rounding per stored value. This is what onnxruntime's
ConvMulFusion / ConvAddFusion / MatMulAddFusion do at session time; done here, the model is smaller,
and ``quantize`` sees one layer with one bias (an int32 bias at ``scale_in * scale_w``) instead of a
layer followed by float ops between two quantization points.

Patterns (each op's other operand a constant, also through Constant nodes and Identity):

- ``Conv``/``ConvTranspose``/``Gemm`` → any chain of Mul/Add/Sub/Div with scalar or per-channel
  constants: BatchNorm decomposed into ``Mul + Add`` (PyTorch after simplifiers), a bias-free Conv
  with ``Add(bias)`` (PaddleClas), ``Conv → Mul(scalar) → Add(scalar)`` (paddle2onnx). Gemm's C and
  beta fold into a new C with beta = 1.
- ``MatMul`` with a constant 2-D weight: Mul/Div scale the weight's columns. On a 2-D input a
  remaining shift makes it one ``Gemm`` (A, B', C = shift; Keras/tf2onnx ``MatMul + Add``). Gemm is
  2-D only, so on a rank-3+ input the shift stays one ``Add`` right after the MatMul (several adds
  merge into it), which ``quantize`` takes as the layer's int32 bias.

"Per-channel" means broadcasting along the layer's output-channel axis and nowhere else: axis 1 of a
Conv/ConvTranspose/Gemm output, the last axis of a MatMul's. Numpy broadcasting aligns on the right,
so ``[C]`` on a Conv output ``[N, C, H, W]`` runs along W: it and ``[1, 1, H, W]`` are refused, as is
a constant with more dimensions than the output (it would broadcast the output up). Also refused,
each with its reason in the report: a layer (or chain) output that is a graph output or feeds other
nodes (they read the unscaled value), ``c / x`` (not affine) and division by zero, before opset 7
constants of more than one element (broadcasting then follows the ``broadcast``/``axis``
attributes, not numpy), non-constant
weights or biases, a MatMul input of unknown rank and MatMul weights that are not 2-D. Only ops with
exactly one constant operand that directly follow a layer (or chain after one) are candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, is_graph_output, new_constant, node_label
from ...report import Report
from . import bn_math as bm
from .edit import TensorTypes, layer_channel_error, rewrite_layer

log = logging.getLogger(__name__)

PASS_NAME = "fold-batchnorm"  # the affine folds are part of that pass (``onnxsq optimize``)
LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
AFFINE = ("Add", "Sub", "Mul", "Div")
ADDITIVE = ("Add", "Sub")
GEMM_IS_2D = "MatMul input of rank {rank}: Gemm is 2-D; the Add stays as the layer's bias"


@dataclass
class _Layer:
    node: gs.Node
    rank: int  # of its output
    axis: int  # output-channel axis
    channels: int


@dataclass
class _Step:
    node: gs.Node
    label: str
    op: str  # as found (the Add a rank-3+ MatMul keeps may have been a Sub)
    c: np.ndarray  # float64, one value per output channel
    var_first: bool  # the layer's side is the first operand
    const: gs.Tensor  # the constant operand as the graph has it


@dataclass
class _Ctx:
    graph: gs.Graph
    report: Report
    types: TensorTypes
    names: UniqueNames
    opset: int


def fold_affine_graph(graph: gs.Graph, *, opset: int, types_from: onnx.ModelProto | None = None,
                      types: TensorTypes | None = None, names: UniqueNames | None = None) -> Report:
    """Fold constant Mul/Add/Sub/Div chains after Conv/ConvTranspose/Gemm/MatMul into the layers of
    ``graph`` (onnx-graphsurgeon, default-domain ``opset``), in place; the graph is cleaned up.

    ``types_from``: the model ``graph`` came from, for shape inference where a MatMul input's rank is
    unknown (``types``/``names``: a caller's own, to share them). One report entry per candidate.
    """
    ctx = _Ctx(graph, Report(PASS_NAME), types or TensorTypes(types_from), names or UniqueNames(graph), opset)
    for layer in [n for n in graph.nodes if n.op in LAYERS and n.outputs]:
        _fold_layer(ctx, layer)
    graph.cleanup(remove_unused_graph_inputs=False)
    entries = [c for c in ctx.report.candidates if c.op in AFFINE]
    folded = sum(c.action == "folded" for c in entries)
    ctx.report.summary.update(affine_nodes=len(entries), affine_folded=folded, affine_left=len(entries) - folded)
    log.info("fold-affine: %(affine_nodes)d candidates, %(affine_folded)d folded, %(affine_left)d left",
             ctx.report.summary)
    return ctx.report


def _var_index(node: gs.Node) -> int | None:
    """Index of the non-constant operand of a candidate (one constant and one variable operand)."""
    if node.op not in AFFINE or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    consts = [const_value(i) is not None for i in node.inputs]
    return consts.index(False) if sorted(consts) == [False, True] else None


def _fold_layer(ctx: _Ctx, layer: gs.Node) -> None:
    if not any(_var_index(n) is not None for n in layer.outputs[0].outputs):
        return
    info = _layer_info(ctx, layer)
    steps: list[_Step] = []
    refused: list[tuple[gs.Node, str]] = []
    cur, who = layer.outputs[0], f"{layer.op} {node_label(layer)}"
    while True:
        cands = [n for n in cur.outputs if _var_index(n) is not None]
        if not cands:
            break
        why = info if isinstance(info, str) else _shared(ctx.graph, cur, who)
        step = _check_step(info, cands[0], ctx.opset) if why is None else why
        if isinstance(step, str):
            refused = [(node, step) for node in (cands if why else cands[:1])]
            break
        steps.append(step)
        cur, who = step.node.outputs[0], f"{step.op} {step.label}"
    pattern = _pattern(layer, steps + [node for node, _ in refused[:1]])
    if steps:
        _rewrite(ctx, info, steps, pattern)
    for node, why in refused:  # after the chain before them: report entries in graph order
        ctx.report.add(node_label(node), node.op, "skipped", why, pattern=pattern)


def _shared(graph: gs.Graph, tensor: gs.Tensor, who: str) -> str | None:
    if is_graph_output(graph, tensor):
        return f"output {tensor.name} of {who} is also a graph output"
    if len(tensor.outputs) != 1:
        return f"output {tensor.name} of {who} also feeds {len(tensor.outputs) - 1} other node(s)"
    return None


def _pattern(layer: gs.Node, nodes: list) -> str:
    return "→".join([layer.op] + [n.op for n in nodes])


def _layer_info(ctx: _Ctx, layer: gs.Node) -> _Layer | str:
    """Output rank, channel axis and channel count of a layer that can absorb an affine map, or why not."""
    label = f"{layer.op} {node_label(layer)}"
    w = const_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if w is None:
        return f"the weight of {label} is not constant"
    if len(layer.inputs) > 2 and layer.inputs[2].name and const_value(layer.inputs[2]) is None:
        return f"the bias of {label} is not constant"
    if not np.issubdtype(w.dtype, np.floating):
        return f"the weight of {label} is {w.dtype}, not float"
    if layer.op == "Conv":
        return _Layer(layer, w.ndim, 1, w.shape[0])
    if layer.op == "ConvTranspose":
        return _Layer(layer, w.ndim, 1, bm.convtranspose_out_channels(w, int(layer.attrs.get("group", 1))))
    if w.ndim != 2:
        return f"the weight of {label} has rank {w.ndim}, not 2"
    if layer.op == "Gemm":
        return _Layer(layer, 2, 1, w.shape[0] if int(layer.attrs.get("transB", 0)) else w.shape[1])
    rank, _ = ctx.types.info(layer.inputs[0])
    if rank is None or rank < 2:
        return f"the input of {label} has {'unknown rank' if rank is None else 'rank 1'}"
    return _Layer(layer, rank, rank - 1, w.shape[1])


def _check_step(info: _Layer, node: gs.Node, opset: int) -> _Step | str:
    var = _var_index(node)
    c = const_value(node.inputs[1 - var])
    if not np.issubdtype(c.dtype, np.floating):
        return f"its constant is {c.dtype}, not float"
    if opset < 7 and c.size != 1:
        return (f"opset {opset} broadcasting (the broadcast/axis attributes) is not numpy's: only 1-element "
                "constants are folded before opset 7")
    vec = bm.channel_vector(c, info.rank, info.axis, info.channels)
    if isinstance(vec, str):
        return vec
    why = bm.affine_step_error(node.op, vec, var == 0)
    return why or _Step(node, node_label(node), node.op, vec, var == 0, node.inputs[1 - var])


def _compose(steps: list[_Step], channels: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.ones(channels), np.zeros(channels)
    for step in reversed(steps):  # from the chain's end back to the layer
        a, b = bm.compose_affine(a, b, step.op, step.c, step.var_first)
    return a, b


def _rewrite(ctx: _Ctx, info: _Layer, steps: list[_Step], pattern: str) -> None:
    layer, label = info.node, node_label(info.node)
    a, b = _compose(steps, info.channels)
    keep = None  # the Add that stays after a rank-3+ MatMul
    if layer.op == "MatMul" and info.rank > 2 and np.any(b != 0):
        keep = [s for s in steps if s.op in ADDITIVE][-1]
        if len(steps) == 1 and keep.op == "Add":  # a lone Add: nothing to fold
            ctx.report.add(keep.label, keep.op, "skipped", GEMM_IS_2D.format(rank=info.rank), pattern=pattern,
                           bias_of=label)
            return
    why = layer_channel_error(layer, info.channels)
    if why:
        for s in steps:
            ctx.report.add(s.label, s.op, "skipped", why, pattern=pattern)
        return
    rewrite_layer(ctx.graph, ctx.names, layer, a, b)
    out, mid = steps[-1].node.outputs[0], layer.outputs[0]
    for s in steps:
        s.node.inputs.clear()
        s.node.outputs.clear()
    if keep is not None:
        _keep_add(ctx, keep, mid, out, b, const_value(layer.inputs[1]))
    else:
        layer.outputs[0] = out
        if layer.op == "MatMul" and np.any(b != 0):
            _to_gemm(ctx, layer, b)
    for s in steps:
        if s is keep:
            ctx.report.add(s.label, s.op, "skipped", GEMM_IS_2D.format(rank=info.rank), pattern=pattern,
                           bias_of=label)
        else:
            into, what = (keep.label, "Add") if keep is not None and s.op in ADDITIVE else (label, layer.op)
            ctx.report.add(s.label, s.op, "folded", f"into {what} {into}", into=into, pattern=pattern)


def _keep_add(ctx: _Ctx, keep: _Step, mid: gs.Tensor, out: gs.Tensor, b: np.ndarray, w: np.ndarray) -> None:
    """The one Add after a rank-3+ MatMul, carrying the chain's shift ``b`` (its own constant if that is it)."""
    node = keep.node
    if node.op == "Add" and np.array_equal(keep.c, b):
        const = keep.const
    else:
        const = new_constant(ctx.graph, f"{keep.label}_bias", bm.cast_like(b, w), ctx.names)
        if ctx.opset < 7:
            node.attrs["broadcast"] = 1  # [M] against the output: broadcasting needs it before opset 7
    node.op = "Add"
    node.inputs.extend([mid, const])
    node.outputs.append(out)


def _to_gemm(ctx: _Ctx, layer: gs.Node, b: np.ndarray) -> None:
    """A 2-D MatMul whose scaled weight is in place becomes ``Gemm(A, B, C = b)`` (C is always given:
    it is optional only from opset 11; before opset 7 C broadcasts only with ``broadcast=1``)."""
    w = const_value(layer.inputs[1])
    layer.op = "Gemm"
    layer.attrs = {"broadcast": 1} if ctx.opset < 7 else {}
    layer.inputs.append(new_constant(ctx.graph, f"{node_label(layer)}_bias", bm.cast_like(b, w), ctx.names))
