"""A per-channel constant shift of a ReLU's output, written as a depthwise 1×1 Conv with unit weights.

``Add(x, b)`` with ``x >= 0`` (a Relu's output, possibly through max/average pools) and ``b`` a constant
per channel with a negative entry — Keras's BatchNorm after ReLU and MaxPool, once
:mod:`..fold_batchnorm.scale_back` moved its scale into the Conv before — becomes
``Conv(x, W = 1, B = b, group = C, kernel 1×1)``: each output is ``x · 1 + b``, the same float values (the
product by one is exact). quantize runs it after fold-forward (which takes the shifts it can into the next
layer) and equalization, before planning, on the native carrier only: with ``carrier="uint8"`` the constant
joins the activations' uint8 carrier (zero point 128) and onnxruntime's QLinearAdd takes the Add as it is.
Like fold-forward it rewrites the float graph before planning, and it is off where ``fold_forward`` is: QAT's
and fine-tuning's exports re-quantize a trained graph whose tensors (the Add's constant) were trained as they are.

Why: quantized, ``x`` is unsigned (uint8) and ``b`` a signed int8 constant, and onnxruntime fuses
``DQ → Add → Q`` into QLinearAdd only where the inputs have one type; the Add ran as float between a
DequantizeLinear and a QuantizeLinear (vietcombank_captcha: three, ~0.22 ms of its ~2.2 ms int8 run with their
Q/DQ, profiled). As a Conv it is one depthwise QLinearConv (~0.11 ms for the three), and ``b`` is an int32
bias on the grid of the input's scale times the weight's, finer than the int8 constant's own.

Candidates: an ``Add`` of one variable and one float constant operand whose variable comes from a Relu
through ``POOLS`` (these keep ``x >= 0``). Left alone, each with a logged reason: a shift that is nowhere
negative (both operands quantize unsigned: one type already), a constant that is not per-channel (axis 1)
or not float, and an input of unknown rank, rank below 3 or unknown channel count (a Dense layer's
``[N, F]``: no 1×1 Conv).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, new_constant, node_label, producer
from ..fold_batchnorm import bn_math as bm

log = logging.getLogger(__name__)

POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


def shifts_as_convs(graph: gs.Graph, names: UniqueNames | None = None) -> int:
    """Rewrite every candidate of ``graph`` in place (the module docstring); how many."""
    names = names or UniqueNames(graph)
    done = 0
    for add in [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2 and len(n.outputs) == 1]:
        consts = [const_value(i) is not None for i in add.inputs]
        chain = _after_relu(add.inputs[consts.index(False)]) if sorted(consts) == [False, True] else []
        if not chain:
            continue
        x, c = chain[0], const_value(add.inputs[consts.index(True)])
        # pools keep rank and channels: the first tensor of the chain whose shape is known tells them
        known = [t.shape for t in chain if t.shape]
        shape = next((s for s in known if len(s) > 1 and isinstance(s[1], int)), known[0] if known else None)
        why = _refusal(x, c, shape)
        if isinstance(why, str):
            log.info("quantize: Add %s stays an Add: %s", node_label(add), why)
            continue
        _rewrite(graph, names, add, x, len(shape), why)
        done += 1
    return done


def _after_relu(x: gs.Tensor) -> list[gs.Tensor]:
    """``x`` and the tensors before it back to a Relu's output, through pools (so ``x >= 0``); [] if not."""
    chain = [x]
    node = producer(x)
    while node is not None and node.op in POOLS and node.inputs and node.outputs[0] is x:
        x = node.inputs[0]
        chain.append(x)
        node = producer(x)
    return chain if node is not None and node.op == "Relu" and node.outputs[0] is x else []


def _refusal(x: gs.Tensor, c: np.ndarray, shape) -> np.ndarray | str:
    """The shift per channel (float64), or why the Add stays."""
    if not np.issubdtype(c.dtype, np.floating):
        return f"its constant is {c.dtype}, not float"
    if not shape or len(shape) < 3 or not isinstance(shape[1], int):
        what = "unknown" if not shape else f"{len(shape)}" if len(shape) < 3 else "of unknown channel count"
        return f"its input {x.name} has rank {what}: no 1x1 Conv takes it"
    vec = bm.channel_vector(c, len(shape), 1, shape[1])
    if isinstance(vec, str):
        return vec
    if not np.any(vec < 0):
        return "the shift is nowhere negative: both operands quantize unsigned (one type, onnxruntime's QLinearAdd)"
    return vec


def _rewrite(graph: gs.Graph, names: UniqueNames, add: gs.Node, x: gs.Tensor, rank: int, shift: np.ndarray) -> None:
    channels = shift.size
    dtype = const_value(next(i for i in add.inputs if i is not x)).dtype
    label = node_label(add)
    w = new_constant(graph, f"{label}_unit_weight", np.ones((channels, 1) + (1,) * (rank - 2), dtype), names)
    b = new_constant(graph, f"{label}_shift", bm.cast_like(shift, dtype), names)
    add.op = "Conv"
    add.inputs.clear()
    add.inputs.extend([x, w, b])
    add.attrs = {"group": channels, "kernel_shape": [1] * (rank - 2)}
