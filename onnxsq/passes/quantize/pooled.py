"""Headroom for pooled heads (``--pooled-headroom BITS``; 1 by default, 0 under ``--effort fast``).

A classifier's head after a global pool holds one value per channel per image: calibration on ``N``
images sees ``N`` draws of each, and the largest of a few draws falls short of what other images
reach (the whole feature map averages to a single number, so nothing inside one image pads the
tail). Every other activation holds thousands of values per image and its range is seen many times
over. So the shift each estimator picks for a pooled-head tensor is lowered by ``BITS``: its range
``[qmin, qmax] * 2**-shift`` doubles per bit, for a step twice as coarse (about 6 dB of that tensor's
own noise per bit) on the few tensors whose clipping costs a whole output.

Pooled head: the outputs of ``GlobalAveragePool`` / ``GlobalMaxPool``, and every tensor computed from
pooled tensors and constants alone (Flatten, Gemm, MatMul, Add, Relu, ...), as long as it leads to a
graph output. A squeeze-excitation branch is pooled too but ends in a gate that multiplies the
feature map (a variable input that is not pooled): its tensors are left as they are, since their
error scales a whole feature map, not one output, and no model showed a gain there. Tensors whose
range is the function's (Softmax outputs; Sigmoid, Tanh, ...: ``plan.bounded``) and tensors with
given parameters keep their shift; a shared-scale group with one pooled member takes the headroom as
a whole (one scale). The report's ``pooled_headroom`` says how many tensors took it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

POOLS = ("GlobalAveragePool", "GlobalMaxPool")
FUNCTION_RANGE = ("Softmax",)  # outputs in [0, 1] whatever the input: calibration's range is the function's


def pooled_head(graph: gs.Graph) -> set[str]:
    """Names of the pooled-head tensors of ``graph`` (toposorted), as defined above."""
    import onnx_graphsurgeon as gs

    pooled: set[str] = set()
    fixed: set[str] = set()  # pooled but bounded by their function: no headroom
    feeds: dict[str, set[str]] = {}  # tensor -> the outputs of the nodes that read it
    for node in graph.nodes:
        variables = [t.name for t in node.inputs if isinstance(t, gs.Variable) and t.name]
        outs = [t.name for t in node.outputs]
        for t in variables:
            feeds.setdefault(t, set()).update(outs)
        if node.op in POOLS or (variables and all(t in pooled for t in variables)):
            pooled.update(outs)
        if node.op in FUNCTION_RANGE:
            fixed.update(outs)
    head = pooled & {t.name for t in graph.outputs}
    for node in reversed(graph.nodes):  # toposorted: a tensor's readers come after it
        for t in node.inputs:
            if t.name in pooled and feeds.get(t.name, set()) & head:
                head.add(t.name)
    return head - fixed


def headroom_for(graph: gs.Graph, activations: list[str], bounded: dict[str, bool], bits: int) -> dict[str, int]:
    """``{tensor: bits}`` for the quantized pooled-head activations of ``graph`` (none when ``bits`` is 0)."""
    if bits <= 0:
        return {}
    planned = set(activations)
    return {t: bits for t in pooled_head(graph) if t in planned and t not in bounded}
