"""Joins that stay float (:mod:`.placement`'s rules): in the float tail after the last compute layer, and
inside float islands.

After a compute layer, where no path leads to another, nothing computes on integers any more: the host
dequantizes what it reads. There an ``Add`` followed by a float op (a detector's box decode: anchors of
0..128 grid cells plus distances in 1/16 steps, then times the stride) or a ``Concat`` (it only moves data:
YOLOv8's ``output0`` puts 0..1 class scores beside 0..1024 pixel boxes, and at the boxes' step one shared
scale rounds every score to 0) gains nothing from a quantization point of its own and loses precision, so
it stays float and its inputs keep their own scales. A tail of integer ops alone (a residual ``Add`` that
writes the output) stays integer: the model's output is then one integer tensor, as a target expects.

Inside a float island (default placement only): an ``Add`` or ``Concat`` whose every variable input comes
out of a float op (:func:`float_made`) would put quantization points inside a float computation, its
inputs' and its own: GELU spelled ``x * 0.5 * (1 + erf(x / sqrt 2))`` had its erf and ``1 + erf`` rounded
to 8 bits, LayerNorm spelled out its ``variance + eps``. It stays float; where a layer reads its output,
that output is quantized there as any float op's is.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ...graph import is_const

FLOAT_TAIL = ("stays float: in the float tail (no compute layer reads it, even after other ops), so its "
              "inputs keep their own scales and its output needs none: a detector's box decode adds anchors "
              "of 0..128 to distances of 1/16 steps, and its output Concat puts 0-1 scores beside 0-1024 "
              "pixel boxes, where one scale would round every score to 0")


FLOAT_ISLAND = ("stays float: every variable input comes out of a float op (inside GELU's 1 + erf, LayerNorm's "
                "variance + eps, ...), where quantization points would only cost precision")


def float_made(graph: gs.Graph, unary: tuple[str, ...] = ()) -> set[str]:
    """The tensors a float op makes (``graph`` in topological order): the outputs of ops with no integer
    kernel that read data, and what moves, pools or a Relu/Clip make of them; ``unary``: ops with one.
    An activation fused into its layer (:mod:`.placement_fuse`) counts as a float op here: a join of such
    outputs requantizes each input from its own scale, as a float island does."""
    from .placement import ACTIVATIONS, ADD, AVERAGING, COMPUTE, CONCAT, IGNORED, SHARE

    made: set[str] = set()
    for node in graph.nodes:
        if node.op in COMPUTE + ADD + CONCAT + IGNORED + unary:
            continue
        if node.op in SHARE + AVERAGING + ACTIVATIONS:
            if node.inputs and node.inputs[0].name in made:
                made.update(o.name for o in node.outputs)
        elif any(t is not None and t.name and not is_const(t) for t in node.inputs):  # reads data, as in_island
            made.update(o.name for o in node.outputs)
    return made


def in_island(node: gs.Node, made: set[str]) -> bool:
    """Every variable input of ``node`` is made by a float op (:func:`float_made`; and it has one)."""
    data = [t for t in node.inputs if t is not None and t.name and not is_const(t)]
    return bool(data) and all(t.name in made for t in data)


def float_tail(graph: gs.Graph) -> set[str]:
    """The joins' outputs that stay float (``graph`` in topological order): after a compute layer
    (:data:`.placement.COMPUTE`), no path to another, and either a Concat's (it only moves data) or one with a float op
    after it (the host computes there in float anyway: a detector's box decode)."""
    from .placement import ACTIVATIONS, ADD, AVERAGING, COMPUTE, CONCAT, IGNORED, SHARE  # (it imports this)

    feeds: set[str] = set()  # tensors with a path to a compute layer
    floating: set[str] = set()  # tensors with a path to an op that runs in float
    integer = COMPUTE + ADD + CONCAT + SHARE + AVERAGING + ACTIVATIONS + IGNORED
    for node in reversed(graph.nodes):  # readers first
        ins = [t.name for t in node.inputs if t is not None and t.name]
        if node.op in COMPUTE or any(o.name in feeds for o in node.outputs):
            feeds.update(ins)
        if node.op not in integer or any(o.name in floating for o in node.outputs):
            floating.update(ins)
    after: set[str] = set()  # tensors with a path from a compute layer
    tail: set[str] = set()
    for node in graph.nodes:
        if node.op in COMPUTE or any(t is not None and t.name in after for t in node.inputs):
            after.update(o.name for o in node.outputs)
            if node.op in ADD + CONCAT + ("Mul",):
                tail.update(o.name for o in node.outputs if o.name not in feeds
                            and (node.op in CONCAT or o.name in floating))
    return tail
