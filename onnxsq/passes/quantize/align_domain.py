"""The domains of :mod:`.align`: every tensor one factor scales, and the layers, constants, float islands
and graph outputs at its boundary that carry it (see :mod:`.align` for the math and what is refused).

A domain is the closure of a tensor under the ops through which a positive factor passes unchanged
(:data:`PASS`: one data input, positively homogeneous; :data:`JOIN`: every data input and the output
together; :data:`SCALE_BY`: a product with a constant; a Pad, its constant value scaled), up to its sources
(layers and normalizations that make it: weight or scale, and bias, times the factor) and sinks (layers that
read it: weight over the factor; a normalization: its epsilon times the factor squared, :data:`NORMS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import node_label
from .through import homogeneous

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # weight at input 1 (a uniform factor: any layout), bias 2
# normalizations: LN(a x) with epsilon a**2 eps is LN(x) (a sink: epsilon times the factor squared), and their
# scale and bias (inputs 1, 2, as a layer's) times the factor make a LN(x) (a source)
NORMS = ("LayerNormalization",)
# one data input (0), homogeneous in it: f(a x) = a f(x) for a > 0 (their other inputs are shapes, indices)
PASS = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
        "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Resize", "Upsample", "Slice", "Split",
        "DepthToSpace", "SpaceToDepth", "Gather", "Expand", "Tile", "ReduceMean", "ReduceSum", "ReduceMax",
        "ReduceMin")
JOIN = ("Add", "Sub", "Concat", "Max", "Min", "Sum")  # every data input and the output scale together
SCALE_BY = ("Mul", "Div")  # with a constant: homogeneous in the other input
SHAPE_ONLY = ("Shape", "Size")  # read the shape alone: the factor does not reach them
# float islands (what the quantized model computes in float between a DequantizeLinear and a QuantizeLinear): a
# maker takes the factor (align_island_outputs, on), with align_islands a reader 1 / factor too, each as a product
# of its own inside the island (an integer target folds it into the function's table); not with integer_only /
# ort_kernels (integer islands)
FUNCTIONS = ("HardSwish", "Sigmoid", "Tanh", "HardSigmoid", "Clip", "Erf", "Exp", "Softplus", "Elu", "Selu",
             "Gelu", "Softsign", "Mish")
MAKERS = ("HardSwish",)  # and a Mul of two activations (SiLU, x * clip(x + 3), squeeze-excitation gates)


@dataclass
class Domain:
    tensors: list[str] = field(default_factory=list)  # every tensor scaled
    sources: list[gs.Node] = field(default_factory=list)  # layers whose weight and bias take the factor
    constants: list[str] = field(default_factory=list)  # constant inputs of joins: times the factor
    sinks: list[gs.Node] = field(default_factory=list)  # layers whose weight takes 1 / factor
    norms: list[gs.Node] = field(default_factory=list)  # normalizations reading it: epsilon times factor**2
    made: list[str] = field(default_factory=list)  # tensors an island makes: a product by the factor after it
    fed: dict[str, list[gs.Node]] = field(default_factory=dict)  # tensor -> its island readers (1 / factor)
    outputs: list[str] = field(default_factory=list)  # graph outputs: a product by 1 / factor after the last DQ
    why: list[str] = field(default_factory=list)  # why it cannot be scaled (empty: it can)


def find_domain(start: gs.Tensor, ctx: Any, outputs: set[str]) -> Domain:
    """The closure of ``start`` under the ops that carry a factor (:data:`PASS`, :data:`JOIN`), up to its
    sources and sinks; ``why`` says what stops it from being scaled."""
    dom, todo, names = Domain(), [start], set()
    while todo:
        t = todo.pop()
        if t.name in names:
            continue
        names.add(t.name)
        dom.tensors.append(t.name)
        if t.name in outputs and _float_ok(ctx):  # handed back through a float product after the last DQ
            dom.outputs.append(t.name)
        elif t.name in outputs:
            dom.why.append(f"{t.name} is a graph output (integer_only / ort_kernels: no float product after it)")
        _upstream(t, ctx, dom, todo)
        for reader in list(t.outputs):
            _downstream(t, reader, ctx, dom, todo)
    dom.why.extend(_shared(dom))
    return dom


def weight_powers(dom: Domain) -> dict[str, int]:
    """The power of the factor each weight and bias of the domain's layers takes, once per tensor: +1 where a
    source makes the domain with it, -1 where a sink reads it, 0 for a layer that does both (a weight several
    layers share, an unrolled RNN's, is scaled once for all of them: :func:`_shared` checks they agree)."""
    sources, sinks = {id(n) for n in dom.sources}, {id(n) for n in dom.sinks}
    return {t.name: _role(node, k, sources, sinks) for node in dom.sources + dom.sinks
            for k, t in enumerate(node.inputs[1:3], start=1) if t.name and (k == 1 or id(node) in sources)}


def _role(node: gs.Node, k: int, sources: set[int], sinks: set[int]) -> int:
    """The power of the factor ``node``'s input ``k`` (1: weight, 2: bias) takes in its domain."""
    return int(id(node) in sources) - int(k == 1 and id(node) in sinks)


def _shared(dom: Domain) -> list[str]:
    """Why a weight of the domain's layers cannot take one factor (empty: none): read by a layer outside the
    domain, or by layers of the domain in different roles."""
    sources, sinks = {id(n) for n in dom.sources}, {id(n) for n in dom.sinks}
    for node in dom.sources + dom.sinks:
        for t in node.inputs[1:3]:
            if not t.name:
                continue
            powers = set()
            for r in t.outputs:
                if id(r) not in sources | sinks:
                    return [f"{t.name} is shared with {node_label(r)}, outside the domain"]
                slots = [i for i, x in enumerate(r.inputs) if x is t]
                if slots not in ([1], [2]):
                    return [f"{t.name} is read by {node_label(r)} other than as its weight or bias"]
                powers.add(_role(r, slots[0], sources, sinks))
            if len(powers) > 1:
                return [f"{t.name} is shared by layers of the domain in different roles"]
    return []


def _data_inputs(node: gs.Node, ctx: Any) -> list[gs.Tensor]:
    return [x for x in node.inputs if x.name and x.name not in ctx.consts]


def _upstream(t: gs.Tensor, ctx: Any, dom: Domain, todo: list) -> None:
    p = t.inputs[0] if len(t.inputs) == 1 else None
    if p is None:
        dom.why.append(f"{t.name} is a graph input")
    elif p.op in LAYERS + NORMS and not _own_weights(p, ctx):
        if p not in dom.sources:
            dom.sources.append(p)
    elif p.op in PASS or (p.op in SCALE_BY and _scaled_by_constant(p, ctx)):
        todo.append(p.inputs[0] if p.op in PASS else _data_inputs(p, ctx)[0])
        todo.extend(o for o in p.outputs if o is not t and o.outputs and p.op in ("Split",))
    elif p.op in JOIN:
        _join(p, ctx, dom, todo)
    elif p.op == "Pad":
        _pad(p, ctx, dom, todo)
    elif _island_outputs(ctx) and len(p.outputs) == 1 and (p.op in MAKERS or _product(p, ctx)):
        dom.made.append(t.name)
    else:
        dom.why.append(f"{t.name} is made by {p.op} {node_label(p)} (it cannot take the factor)")


def _float_ok(ctx: Any) -> bool:
    """Whether a float product may be added (not where islands become integer ops)."""
    return not (ctx.cfg.integer_only or ctx.cfg.ort_kernels)


def _islands(ctx: Any) -> bool:
    return ctx.cfg.align_islands and _float_ok(ctx)


def _island_outputs(ctx: Any) -> bool:
    return (ctx.cfg.align_islands or ctx.cfg.align_island_outputs) and _float_ok(ctx)


def _product(node: gs.Node, ctx: Any) -> bool:
    """A Mul of two activations (computed in float)."""
    return node.op == "Mul" and len(node.inputs) == 2 and len(_data_inputs(node, ctx)) == 2


def _downstream(t: gs.Tensor, reader: gs.Node, ctx: Any, dom: Domain, todo: list) -> None:
    k = [i for i, x in enumerate(reader.inputs) if x is t]
    if reader.op in SHAPE_ONLY:
        return
    if reader.op in PASS and k == [0]:
        todo.extend(reader.outputs[:len(reader.outputs) if reader.op == "Split" else 1])
    elif reader.op in SCALE_BY and _scaled_by_constant(reader, ctx) and not (reader.op == "Div" and k != [0]):
        todo.append(reader.outputs[0])
    elif reader.op in JOIN:
        _join(reader, ctx, dom, todo)
    elif reader.op == "Pad" and k == [0]:
        _pad(reader, ctx, dom, todo)
    elif reader.op in LAYERS and k == [0] and not _own_weights(reader, ctx):
        if reader not in dom.sinks:
            dom.sinks.append(reader)
    elif reader.op in NORMS and k == [0]:
        if reader not in dom.norms:
            dom.norms.append(reader)
    elif _islands(ctx) and (reader.op in FUNCTIONS or _product(reader, ctx)):
        dom.fed.setdefault(t.name, []).append(reader)
    elif reader.op == "Softmax" and k == [0] and _float_ok(ctx):  # float in every scheme: 1 / factor before it
        dom.fed.setdefault(t.name, []).append(reader)
    else:
        dom.why.append(f"{t.name} is read by {reader.op} {node_label(reader)} (no weights to take the factor)")


def _join(node: gs.Node, ctx: Any, dom: Domain, todo: list) -> None:
    todo.append(node.outputs[0])
    for x in node.inputs:
        if x.name in ctx.consts:
            why = _own_constant(node, x, ctx)
            if why:
                dom.why.append(why)
            elif x.name not in dom.constants:
                dom.constants.append(x.name)
        elif x.name:
            todo.append(x)


def _pad(node: gs.Node, ctx: Any, dom: Domain, todo: list) -> None:
    """A Pad: its data input and output scale together, its constant value (input 2; an offset's lift) too."""
    todo.extend([node.inputs[0], node.outputs[0]])
    value = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if value is None:
        if float(node.attrs.get("value", 0.0)) != 0.0:  # opset < 11: an attribute
            dom.why.append(f"{node_label(node)} pads with a value attribute")
        return
    why = _own_constant(node, value, ctx) if value.name in ctx.consts else f"{node_label(node)}: computed pad value"
    if why:
        dom.why.append(why)
    elif value.name not in dom.constants:
        dom.constants.append(value.name)


def _scaled_by_constant(node: gs.Node, ctx: Any) -> bool:
    """A Mul or Div with one constant operand (the divisor, for Div) and one data input."""
    if len(node.inputs) != 2:
        return False
    const = [x.name in ctx.consts for x in node.inputs]
    return const == [False, True] or (node.op == "Mul" and const == [True, False])


def _own_constant(node: gs.Node, x: gs.Tensor, ctx: Any) -> str | None:
    v = ctx.consts.get(x.name)
    if v is None or v.dtype != np.float32:
        return f"{node_label(node)}: constant {x.name} is not float32"
    if len(x.outputs) != 1:
        return f"{node_label(node)}: constant {x.name} is shared with another node"
    if x.name in ctx.given:
        return f"{node_label(node)}: {x.name} has given parameters"
    return None


def _own_weights(node: gs.Node, ctx: Any) -> str | None:
    """Why ``node``'s weight (and bias) cannot take a factor (not float32 constants, given), or None (sharing
    with other layers: :func:`_shared`)."""
    if len(node.inputs) < 2:
        return f"{node_label(node)}: no weight input"
    for i, t in enumerate(node.inputs[1:3], start=1):
        if not t.name and i == 2:
            continue
        v = ctx.consts.get(t.name)
        if v is None or v.dtype != np.float32:
            return f"{node_label(node)}: input {i} is not a float32 constant"
        if t.name in ctx.given:
            return f"{node_label(node)}: {t.name} has given parameters"
    return None


def unfit(ctx: Any, dom: Domain, mine: list[str]) -> str | None:
    inside = set(dom.tensors) | set(dom.constants)
    for t in mine:
        if t in ctx.given:
            return f"{t} has given parameters"
        if t in ctx.plan.bounded or (t in ctx.softmax and not _float_ok(ctx)):
            return f"{t}: its format comes from the function that reads or makes it"
        if t in ctx.through and t not in dom.fed and not homogeneous(ctx.through[t]):
            return f"{t}: read by a function as well as by layers"
        if ctx.stats.get(t) is None or ctx.stats[t].batches == 0:
            return f"{t}: no calibration statistics"
        if t in ctx.headroom:  # a factor fitted to its few draws would take back the headroom they lack
            return f"{t}: a pooled head's tensor (few calibration draws: its range has headroom, .pooled)"
        outside = [m for m in ctx.plan.members(ctx.plan.groups.get(t, t)) if m not in inside]
        if outside:
            return f"{t} shares one scale with {outside[0]}, outside the domain"
    return None
