"""Activations fused into the layer before them (``fuse_activations``): one quantization point per layer.

Math: a layer's integer accumulator ``acc`` is ``x_q * w_q`` at scale ``s_in * s_w``. The default QDQ form
assumes a target that requantizes it to 8 bits and then applies the activation ``f`` to that 8-bit tensor,
``Q(f(Q(acc)))``: two roundings, and the first one at the step of the pre-activation range (SiLU's negative
half, that ``f`` squashes to ``[-0.28, 0]``, takes codes that the output does not need). A target that
applies ``f`` to the accumulator itself rounds once, ``Q(f(acc * s_in * s_w))``, as every target does for
Relu and Clip (always fused, :mod:`.placement`). In QDQ form the layer's output is then the activation's: no
Q/DQ between the layer and ``f``.

Modes (:data:`.config.FUSIONS`): ``none`` (the default: TFLite-style int8 kernels and onnxruntime's read an 8-bit
input); ``leaky``: ``LeakyRelu`` and ``PRelu`` with constant slopes, piecewise linear, so exact on the
accumulator as Relu is (a per-channel multiply of the negative side: TIDL-class and NPU targets); ``all``:
also ``Sigmoid``, ``Tanh``, ``HardSigmoid``, ``HardSwish`` and their ``x * gate(x)`` spellings (SiLU,
HardSwish), for targets with an activation unit on the accumulator.

A join (Add, Concat) of fused outputs stays a float island (:mod:`.placement_tail`): each input is
requantized from its layer's own scale to the join's, as a target requantizes a Concat of differently
scaled inputs; one shared scale for all of them cost more on the zoo (the README's table).

Refused (the activation then runs as before, after the layer's own quantization point): a layer output that
is a graph output or has another reader, an activation that ``--exclude`` matches, a PRelu whose slope is
not a constant, a gate whose output something other than the ``Mul`` reads, and non-float32 tensors.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ...graph import is_const, is_graph_output

LEAKY = ("LeakyRelu", "PRelu")
FUNCTIONS = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish")
GATES = ("Sigmoid", "HardSigmoid")  # x * gate(x): SiLU, HardSwish


def _single(t: gs.Tensor, ops: tuple[str, ...]) -> list[gs.Node]:
    """``t``'s one reader where it is one of ``ops`` (one output; PRelu: a constant slope)."""
    r = t.outputs[0]
    if r.op not in ops or len(r.outputs) != 1 or r.inputs[0] is not t:
        return []
    if r.op == "PRelu" and not is_const(r.inputs[1]):
        return []
    return [r]


def _gated(t: gs.Tensor) -> list[gs.Node]:
    """[gate, Mul] where ``t``'s two readers compute ``t * gate(t)`` and only the Mul reads the gate."""
    gates = [n for n in t.outputs if n.op in GATES and len(n.inputs) == 1 and len(n.outputs) == 1]
    if len(gates) != 1:
        return []
    gate = gates[0]
    mul = next(n for n in t.outputs if n is not gate)
    g = gate.outputs[0]
    if mul.op != "Mul" or len(g.outputs) != 1 or len(mul.outputs) != 1:
        return []
    if sorted(i.name for i in mul.inputs) != sorted([t.name, g.name]):
        return []
    return [gate, mul]


def fused_function(graph: gs.Graph, t: gs.Tensor, mode: str, excluded) -> list[gs.Node]:
    """The nodes that compute the activation of the layer output ``t`` and fuse into its layer under ``mode``
    (the last one's output is the layer's quantization point), or [] (``excluded``: node → matching pattern)."""
    if mode == "none" or is_graph_output(graph, t) or not t.outputs:
        return []
    if len(t.outputs) == 1:
        nodes = _single(t, LEAKY + (FUNCTIONS if mode == "all" else ()))
    else:
        nodes = _gated(t) if mode == "all" and len(t.outputs) == 2 else []
    from .placement import _is_float  # (placement imports this module)

    if any(excluded(n) for n in nodes) or not all(_is_float(n.outputs[0]) for n in nodes):
        return []
    return nodes
