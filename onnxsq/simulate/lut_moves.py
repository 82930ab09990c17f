"""Tables of layers that also move elements: steps that only rearrange them (Slice, Reshape, Transpose,
Split, Gather, ...) before, between or after the elementwise steps of one integer tensor, with shape
arithmetic feeding them (``Shape → Gather → ... → Slice``).

An elementwise function with scalar constants commutes with any rearrangement, so such a layer is
the table of its elementwise part looked up on the input's codes moved as the layer moves them: the
moves run on the integer codes (exact, the generic integer kernels), then one look-up. Values that
were moved are never combined with values that were not (that would pair different positions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .program import Const, Layer, Step

MOVE_OPS = frozenset({"Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather",
                      "Split", "Expand"})


@dataclass
class Moved:
    """A layer split into its table (``table``: the elementwise steps reading the input directly, and
    the tensor they give) and the moves of the input's codes (``moves``: steps and the tensor they give)."""

    table: tuple[list[Step], str]
    moves: tuple[list[Step], str]


def _renamed(step: Step, names: dict[str, str]) -> Step:
    return replace(step, inputs=[names.get(i, i) for i in step.inputs])


def split_moves(layer: Layer, src: str, dq: dict[str, str], consts: dict[str, Const],
                elementwise: frozenset[str]) -> Moved | str | None:
    """The :class:`Moved` form of ``layer`` (one integer input ``src``), None when no step moves
    (a plain table), or why it is not a table (a string)."""
    state: dict[str, str] = {}  # tensor -> "x" (elementwise of the input), "m" (moved), "p" (plain)
    alias: dict[str, str] = {}  # x/m tensor -> the table-side tensor it is a move of
    codes: dict[str, str] = {}  # x/m tensor -> the moves-side tensor holding its codes' positions
    table, moves, moved = [], [], False
    for step in layer.steps:
        outs = [o for o in step.outputs if o]
        data = [i for i in step.inputs if i and (dq.get(i) == src or state.get(i) in ("x", "m"))]
        for i in data:
            if dq.get(i) == src:
                state[i], alias[i], codes[i] = "x", i, i
        rest = [i for i in step.inputs if i and i not in data]
        if step.domain not in ("", "ai.onnx"):
            return f"{step.domain}.{step.op} is not elementwise"
        if not data or step.op == "Shape":  # shape arithmetic (on constants, or a tensor's shape)
            if any(i not in consts and state.get(i) != "p" for i in rest):
                return f"{step.op} reads a value that is neither the input nor a constant"
            state.update(dict.fromkeys(outs, "p"))
            moves.append(_renamed(step, codes))
            continue
        if step.op in elementwise:
            if any(i not in consts or np.size(consts[i].values) != 1 or np.ndim(consts[i].values) > 1 for i in rest):
                return f"{step.op} with a constant that is not a scalar, or a computed operand, after a move"
            kind = "x" if all(state[i] == "x" for i in data) else "m"
            if kind == "m" and len(set(data)) != 1:
                return f"{step.op} combines moved and unmoved values"
            for o in outs:
                state[o], alias[o], codes[o] = kind, o, codes[data[0]]
            table.append(_renamed(step, alias))
            continue
        if step.op in MOVE_OPS and data == [step.inputs[0]] and all(i in consts or state.get(i) == "p" for i in rest):
            for o in outs:
                state[o], alias[o], codes[o] = "m", alias[data[0]], o
            moves.append(_renamed(step, codes))
            moved = True
            continue
        return f"{step.op} is neither elementwise nor a move"
    if state.get(layer.source) not in ("x", "m"):
        return "its output is not a function of the input"
    if not moved:
        return None
    return Moved((table, alias[layer.source]), (moves, codes[layer.source]))


def table_layer(layer: Layer, moved: Moved) -> Layer:
    """The layer as its table sees it: the elementwise steps only."""
    steps, source = moved.table
    return replace(layer, steps=steps, source=source)


def moves_layer(layer: Layer, moved: Moved) -> Layer:
    """The moves of the input's codes, as an integer layer (no output quantizer: the codes keep their scale)."""
    steps, source = moved.moves
    return replace(layer, kind="int", steps=steps, source=source, output=source, out=None)
