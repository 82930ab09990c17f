"""The three ways an eval-mode BatchNormalization ``y = s * x + t`` leaves the graph, as rewrite rules.

Each rule is a ``check`` that either returns a match (everything the rewrite needs, computed, nothing
changed yet) or the reason it does not apply, and a ``rewrite`` that applies a match and cannot fail.
The driver (:mod:`.fold`) tries them in the order of :data:`RULES` for every BN (each rule over all the
BNs left by the one before: a BN between two layers goes into the one it follows) and reports every
reason of every rule that did not apply.

1. :class:`IntoLayerBefore` — ``Conv``/``ConvTranspose``/``Gemm``/``MatMul`` (→ constant
   Add/Sub/Mul/Div ...) → BN: with the chain between composed to ``a * L(x) + b``, the layer computes
   ``(s a) * L(x) + (s b + t)``: ``W'[o] = W[o] s a[o]``, ``bias'[o] = bias[o] s a[o] + s b[o] + t[o]``
   (ConvTranspose: output channel ``g * M/g + j`` is column j of group g on weight axis 1; Gemm: C and
   beta fold into a new C with beta 1; MatMul: the weight's columns, the shift becomes an Add).
   Refused: the layer's or an intermediate output is a graph output or feeds other nodes (they would
   read the scaled value), a non-constant weight or bias, a constant that is not per-channel, a MatMul
   whose output channel is not axis 1 (input rank ≠ 2 or weight rank ≠ 2).
2. :class:`IntoConvAfter` — BN → ``Conv``: ``W'[o,i] = W[o,i] s[c]``, ``b'[o] = b[o] + sum W[o,i,k] t[c]``
   with ``c`` the input channel of (o, i). Exact only where every output sees a full window of real
   input: without padding, or with ``t = 0`` (zero padding of ``s x`` equals zero padding of
   ``s x + t``); with padding the border outputs would gain ``t`` from padded positions: refused.
3. :class:`ToMulAdd` — the fallback: the BN becomes ``Mul`` and/or ``Add`` with ``[C, 1, ...]``
   constants (``Identity`` for the identity map), exact in float. Refused when the input's rank is
   unknown (no broadcast shape can be built). Not used with ``standalone="keep"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, is_graph_output, new_constant, node_label, producer, sole_consumer
from . import bn_math as bm
from .edit import TensorTypes, layer_channel_error, rewrite_layer, set_const_input

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
THROUGH = ("Add", "Sub", "Mul", "Div")
MAX_THROUGH = 8  # constant elementwise nodes walked between a layer and its BN


@dataclass
class Context:
    """What the rules share over one run of the pass: the graph, its types and fresh names."""

    graph: gs.Graph
    types: TensorTypes
    names: UniqueNames


@dataclass
class Match:
    """A BN a rule applies to, with what the rule's rewrite needs (``target``: the layer it goes into)."""

    bn: gs.Node
    target: gs.Node | None = None
    chain: list[gs.Node] = field(default_factory=list)  # BN side first
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    rank: int | None = None
    dtype: np.dtype | None = None


@dataclass(frozen=True)
class Applied:
    """What a rewrite did, for the report: ``action`` "folded" or "replaced", ``into`` the layer or form."""

    action: str
    reason: str
    into: str
    pattern: str


class Rule:
    """A check (``Match`` or the reason it does not apply) and a rewrite of that match."""

    name: ClassVar[str]

    def check(self, ctx: Context, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> Match | str:
        raise NotImplementedError

    def rewrite(self, ctx: Context, match: Match) -> Applied:
        raise NotImplementedError


def _feeds_only(ctx: Context, tensor: gs.Tensor, who: str) -> str | None:
    if is_graph_output(ctx.graph, tensor):
        return f"output {tensor.name} of {who} is also a graph output"
    if len(tensor.outputs) != 1:
        return f"output {tensor.name} of {who} also feeds {len(tensor.outputs) - 1} other node(s)"
    return None


def _detach(*nodes: gs.Node) -> None:
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()


class IntoLayerBefore(Rule):
    """BN (after constant elementwise ops) folded into the layer that produces its input."""

    name = "into-layer-before"

    def check(self, ctx: Context, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> Match | str:
        found = self._walk(ctx, bn)
        if isinstance(found, str):
            return found
        layer, chain = found
        rank = self._out_rank(ctx, layer)
        if isinstance(rank, str):
            return rank
        a, b = np.ones(s.size), np.zeros(s.size)
        for node in chain:  # BN side first: composes a * node(x) + b back towards the layer
            var_first = const_value(node.inputs[0]) is None
            c = bm.per_channel(const_value(node.inputs[1 if var_first else 0]), rank, s.size)
            if c is None:
                return f"the constant of {node.op} {node_label(node)} is not per-channel"
            if bm.affine_step_error(node.op, c, var_first):
                return f"Div {node_label(node)} is not a division by a non-zero constant"
            a, b = bm.compose_affine(a, b, node.op, c, var_first)
        why = layer_channel_error(layer, s.size)
        return why or Match(bn, layer, chain, s * a, s * b + t)

    @staticmethod
    def _walk(ctx: Context, bn: gs.Node) -> tuple[gs.Node, list[gs.Node]] | str:
        """The layer before ``bn`` and the constant elementwise nodes between them, or why there is none."""
        chain: list[gs.Node] = []
        cur = bn.inputs[0]
        while True:
            node = producer(cur)
            if node is None:
                return f"its input {cur.name} is not produced by a node (a graph input)"
            if node.op not in LAYERS and (node.op not in THROUGH or len(chain) >= MAX_THROUGH):
                return (f"its input comes from {node.op} {node_label(node)}, which cannot absorb a per-channel "
                        "affine map")
            why = _feeds_only(ctx, cur, f"{node.op} {node_label(node)}")
            if why:
                return why
            if node.op in LAYERS:
                return node, chain
            consts = [const_value(i) is not None for i in node.inputs]
            if sorted(consts) != [False, True]:
                return f"{node.op} {node_label(node)} before it has no single constant operand"
            chain.append(node)
            cur = node.inputs[consts.index(False)]

    @staticmethod
    def _out_rank(ctx: Context, layer: gs.Node) -> int | str:
        w = const_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
        if w is None:
            return f"the weight of {layer.op} {node_label(layer)} is not constant"
        if layer.op in ("Conv", "ConvTranspose"):
            return w.ndim
        if layer.op == "Gemm":
            return 2
        a_rank, _ = ctx.types.info(layer.inputs[0])
        if w.ndim != 2 or a_rank != 2:
            return (f"MatMul {node_label(layer)} is not [N, K] x [K, M] (input rank {a_rank}, weight rank "
                    f"{w.ndim}): its channel axis 1 is not the weight's output axis")
        return 2

    def rewrite(self, ctx: Context, match: Match) -> Applied:
        bn, layer, shift = match.bn, match.target, match.shift
        rewrite_layer(ctx.graph, ctx.names, layer, match.scale, shift)
        out = bn.outputs[0]
        _detach(bn, *match.chain)
        if layer.op == "MatMul" and np.any(shift != 0):  # MatMul has no bias input: the shift is an Add
            _, dtype = ctx.types.info(out)
            mid = gs.Variable(ctx.names.fresh(f"{out.name}_matmul"), dtype=out.dtype, shape=out.shape)
            layer.outputs[0] = mid
            w = const_value(layer.inputs[1])
            shift_c = new_constant(ctx.graph, f"{node_label(bn)}_shift", bm.cast_like(shift, dtype or w.dtype),
                                   ctx.names)
            ctx.graph.nodes.append(gs.Node("Add", ctx.names.fresh(f"{node_label(bn)}_add"),
                                           inputs=[mid, shift_c], outputs=[out]))
        else:
            layer.outputs[0] = out
        pattern = "→".join([layer.op] + [n.op for n in reversed(match.chain)] + ["BN"])
        return Applied("folded", f"into {layer.op} {node_label(layer)}", node_label(layer), pattern)


class IntoConvAfter(Rule):
    """BN folded into the Conv that reads its output (input channels scaled, the shift into the bias)."""

    name = "into-conv-after"

    def check(self, ctx: Context, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> Match | str:
        conv = sole_consumer(ctx.graph, bn.outputs[0])
        if conv is None:
            return "its output is a graph output or feeds several nodes (no single next Conv)"
        if conv.op != "Conv" or conv.inputs[0] is not bn.outputs[0]:
            return f"its output feeds {conv.op} {node_label(conv)}, not a Conv's data input"
        w = const_value(conv.inputs[1])
        has_bias = len(conv.inputs) > 2 and conv.inputs[2].name != ""
        if w is None or (has_bias and const_value(conv.inputs[2]) is None):
            return f"the next Conv {node_label(conv)} has a non-constant weight or bias"
        group = int(conv.attrs.get("group", 1))
        if w.shape[1] * group != s.size:
            return f"the next Conv {node_label(conv)} reads {w.shape[1] * group} channels, the BN has {s.size}"
        if np.any(t != 0) and _pads_input(conv, w):
            return (f"the next Conv {node_label(conv)} pads its input: the BN shift would be wrong at the borders "
                    "(exact only without padding)")
        return Match(bn, conv, scale=s, shift=t)

    def rewrite(self, ctx: Context, match: Match) -> Applied:
        bn, conv = match.bn, match.target
        w = const_value(conv.inputs[1])
        has_bias = len(conv.inputs) > 2 and conv.inputs[2].name != ""
        bias = const_value(conv.inputs[2]) if has_bias else None
        group = int(conv.attrs.get("group", 1))
        new_w, new_b = bm.fold_into_next_conv(w, bias, group, match.scale, match.shift)
        set_const_input(ctx.graph, conv, 1, bm.cast_like(new_w, w), conv.inputs[1].name, ctx.names)
        base = conv.inputs[2].name if has_bias else f"{node_label(conv)}_bias"
        set_const_input(ctx.graph, conv, 2, bm.cast_like(new_b, bias if bias is not None else w), base, ctx.names)
        conv.inputs[0] = bn.inputs[0]
        _detach(bn)
        return Applied("folded", f"forward into Conv {node_label(conv)}", node_label(conv), "BN→Conv")


def _pads_input(conv: gs.Node, w: np.ndarray) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        strides = conv.attrs.get("strides", [1] * (w.ndim - 2))
        return any(k != 1 for k in w.shape[2:]) or any(st != 1 for st in strides)
    if auto_pad == "VALID":
        return False
    return any(p != 0 for p in conv.attrs.get("pads", []))


class ToMulAdd(Rule):
    """The fallback: the BN becomes its cheapest exact elementwise form (Mul and/or Add, or Identity)."""

    name = "to-mul-add"

    def check(self, ctx: Context, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> Match | str:
        rank, dtype = ctx.types.info(bn.inputs[0])
        if rank is None or rank < 2:
            return f"kept: the rank of its input {bn.inputs[0].name} is unknown, so no broadcast form can be built"
        return Match(bn, scale=s, shift=t, rank=rank, dtype=dtype or const_value(bn.inputs[1]).dtype)

    def rewrite(self, ctx: Context, match: Match) -> Applied:
        bn = match.bn
        x, y, label = bn.inputs[0], bn.outputs[0], node_label(bn)
        mul, add = bm.standalone_form(match.scale, match.shift, match.rank)
        _detach(bn)
        steps = [(op, v) for op, v in (("Mul", mul), ("Add", add)) if v is not None] or [("Identity", None)]
        cur = x
        for i, (op, v) in enumerate(steps):
            out = y if i == len(steps) - 1 else gs.Variable(ctx.names.fresh(f"{y.name}_{op.lower()}"), dtype=y.dtype)
            inputs = [cur] if v is None else [
                cur, new_constant(ctx.graph, f"{label}_{op.lower()}", bm.cast_like(v, match.dtype), ctx.names)]
            ctx.graph.nodes.append(gs.Node(op, ctx.names.fresh(f"{label}_{op.lower()}"), inputs=inputs,
                                           outputs=[out]))
            cur = out
        form = "+".join(op for op, _ in steps)
        return Applied("replaced", f"became {form}", form, "BN→" + form)


RULES: tuple[Rule, ...] = (IntoLayerBefore(), IntoConvAfter(), ToMulAdd())
