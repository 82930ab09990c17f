"""Accumulator widths: the worst case a layer can reach (from its weights, its bias and its input's
integer range) and the width an observed accumulator needs."""

from __future__ import annotations

import math

import numpy as np

from .program import Layer, Program

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def signed_bits(magnitude: int) -> int:
    """Bits of a two's-complement integer that holds every value in ``[-magnitude, magnitude]``."""
    return 1 + max(1, math.ceil(math.log2(magnitude + 1))) if magnitude > 0 else 1


def _input_max(program: Program, name: str) -> int | None:
    if name in program.dq:
        qt = program.tensors[program.dq[name]]
        return (1 << (qt.bits - 1)) if qt.signed else (1 << qt.bits) - 1
    c = program.consts.get(name)
    if c is not None and c.shift is not None:
        return int(np.abs(c.values).max(initial=0))
    return None


def worst_accumulator(program: Program, layer: Layer) -> int | None:
    """The largest |accumulator| the layer's first MAC step can reach (None: no MAC step, or its
    operands are not both integer)."""
    step = next((s for s in layer.steps if s.op in MAC_OPS), None)
    if step is None or layer.kind != "int":
        return None
    x, w = step.inputs[0], step.inputs[1]
    xmax = _input_max(program, x)
    wc = program.consts.get(w)
    if xmax is None or (wc is None and _input_max(program, w) is None):
        return None
    bias = 0
    if len(step.inputs) > 2 and step.inputs[2] in program.consts and program.consts[step.inputs[2]].shift is not None:
        bias = int(np.abs(program.consts[step.inputs[2]].values).max(initial=0))
    if wc is None or wc.shift is None:  # two activations: K products of the largest magnitudes
        return None
    a = np.abs(wc.values.astype(np.int64))
    if step.op == "Conv":
        per = a.reshape(a.shape[0], -1).sum(axis=1)
    elif step.op == "ConvTranspose":
        per = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).sum(axis=1)
    elif step.op == "Gemm":
        per = a.sum(axis=1 if step.attrs.get("transB", 0) else 0)
    else:
        per = a.sum(axis=-2) if a.ndim >= 2 else a
    return int(per.max(initial=0)) * xmax + bias
