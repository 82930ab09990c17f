"""Look-up tables: a layer whose steps are elementwise functions of *one* integer tensor (and
constants) — Sigmoid, HardSigmoid, HardSwish, SiLU ``x * sigmoid(x)``, Tanh, LeakyRelu, PRelu, GELU,
a decomposed HardSwish ``x * clip(x + 3, 0, 6) / 6``, a multiply by a per-channel constant, ... —
takes at most ``2**bits`` input codes, so it *is* a table: the output code of every input code.

The table is what onnxruntime computes for ``DequantizeLinear → op → QuantizeLinear``: the layer's
float steps run (in one onnxruntime session, as a float island's) on the dequantized codes, exact in
float32, then the layer's quantizer rounds (``--rounding``) and saturates. Constants that vary along
some axes (a PRelu slope or a multiplier per channel) make one table per position of their broadcast
shape: ``table[code, position]``. A layer that also moves elements (Slice, Split, Reshape, ...: one
input, scalar constants) is the table of its elementwise steps on its input's codes moved first
(:mod:`.lut_moves`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .lut_moves import Moved, split_moves, table_layer
from .rounding import int_limits, round_float

if TYPE_CHECKING:
    from .program import Layer, Program

ELEMENTWISE = frozenset({
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Relu", "Clip", "ThresholdedRelu",
    "Mish", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Identity", "Add", "Sub", "Mul", "Div", "Pow", "Max",
    "Min",
})
MAX_ENTRIES = 1 << 20  # codes x positions of the constants' broadcast shape


@dataclass
class Table:
    """``values[code - low, position]`` (int32, flattened) and which entries saturated."""

    values: np.ndarray  # (codes, *shape) int32
    clipped: np.ndarray  # (codes, *shape) bool
    low: int  # the smallest input code

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape[1:]

    def lookup(self, q: np.ndarray) -> tuple[np.ndarray, int]:
        """The output codes of the input codes ``q``, and how many saturated."""
        idx = np.subtract(q, self.low, dtype=np.int64)
        positions = int(np.prod(self.shape))
        if positions > 1:
            if q.ndim < len(self.shape) or np.broadcast_shapes(q.shape, self.shape) != q.shape:
                raise ValueError(f"table shape {list(self.shape)} does not broadcast to {list(q.shape)}")
            idx *= positions
            idx += np.arange(positions).reshape(self.shape)
        out = np.take(self.values.reshape(-1), idx)
        n = int(np.count_nonzero(np.take(self.clipped.reshape(-1), idx))) if self.clipped.any() else 0
        return out, n


def lut_form(program_consts: dict, dq: dict, tensors: dict, layer: Layer) -> str:
    """Why ``layer`` is not a table ('' when it is one)."""
    if layer.out is None or len(layer.inputs) != 1 or layer.inputs[0] not in tensors:
        return "not one integer input"
    src = layer.inputs[0]
    qt = tensors[src]
    produced: set[str] = set()
    shapes = []
    if any(step.domain not in ("", "ai.onnx") or step.op not in ELEMENTWISE for step in layer.steps):
        moved = split_moves(layer, src, dq, program_consts, ELEMENTWISE)
        if not isinstance(moved, Moved):  # None: no move, yet a step that is not elementwise
            step = next(s for s in layer.steps if s.domain not in ("", "ai.onnx") or s.op not in ELEMENTWISE)
            return moved or f"{step.op} is not elementwise"
        layer = table_layer(layer, moved)
    for step in layer.steps:
        if step.domain not in ("", "ai.onnx") or step.op not in ELEMENTWISE:
            return f"{step.op} is not elementwise"
        for i in step.inputs:
            if not i or i in produced or dq.get(i) == src:
                continue
            if i not in program_consts:
                return f"{i} is neither the input nor a constant"
            shapes.append(np.shape(program_consts[i].values))
        produced.update(o for o in step.outputs if o)
    if qt.bits > 16:
        return f"a {qt.bits}-bit input has too many codes for a table"
    try:
        shape = np.broadcast_shapes(*shapes) if shapes else ()
    except ValueError:
        return "its constants do not broadcast together"
    if (1 << qt.bits) * int(np.prod(shape)) > MAX_ENTRIES:
        return f"constants of shape {list(shape)} make a table over {MAX_ENTRIES} entries"
    return ""


def table_shape(program: Program, layer: Layer) -> tuple[int, ...]:
    """The broadcast shape of the constants the layer's steps read (one table per position)."""
    src = layer.inputs[0]
    produced: set[str] = set()
    shapes = []
    for step in layer.steps:
        for i in step.inputs:
            if i and i not in produced and program.dq.get(i) != src and i in program.consts:
                shapes.append(np.shape(program.consts[i].values))
        produced.update(o for o in step.outputs if o)
    return tuple(np.broadcast_shapes(*shapes)) if shapes else ()


def moved_form(program: Program, layer: Layer) -> Moved | None:
    """A ``lut`` layer's split into its table and the moves of its input's codes (None: no moves)."""
    if all(s.domain in ("", "ai.onnx") and s.op in ELEMENTWISE for s in layer.steps):
        return None
    moved = split_moves(layer, layer.inputs[0], program.dq, program.consts, ELEMENTWISE)
    return moved if isinstance(moved, Moved) else None


def build_table(program: Program, layer: Layer, runner, rounding: str) -> Table:
    """The layer's table: its float steps on every dequantized input code (``runner``: a
    :class:`~.islands.FloatRunner`), quantized by the layer's output type with ``rounding``."""
    src = layer.inputs[0]
    moved = moved_form(program, layer)
    if moved is not None:  # the table of the elementwise steps; the moves run on the codes (.lut_moves)
        layer = table_layer(layer, moved)
    qt, out = program.tensors[src], layer.out
    low, high = int_limits(qt.bits, qt.signed)
    shape = table_shape(program, layer)
    codes = np.arange(low, high + 1, dtype=np.float64) * np.ldexp(1.0, -qt.shift)
    x = np.ascontiguousarray(np.broadcast_to(codes.astype(np.float32).reshape((-1,) + (1,) * len(shape)),
                                             (codes.size, *shape)))
    names = {i for s in layer.steps for i in s.inputs if program.dq.get(i) == src}
    (y,) = runner.run(f"{layer.name}/table", layer.steps, dict.fromkeys(names, x), program.consts, [layer.source])
    if np.isnan(y).any():
        raise ValueError("the float steps give NaN on some input codes")
    f = round_float(np.ldexp(np.asarray(y, dtype=np.float64), out.shift), rounding)
    lo, hi = int_limits(out.bits, out.signed)
    clipped = (f < lo) | (f > hi)
    return Table(np.clip(f, lo, hi).astype(np.int32), clipped, low)
