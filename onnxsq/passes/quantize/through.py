"""Range choice through the function that reads a tensor (``method`` ``mse`` / ``auto``).

A Conv whose output only a SiLU reads (``x * Sigmoid(x)``: YOLO-style detectors), a HardSwish (the op, or
spelled ``x * HardSigmoid(x)``), or only a Sigmoid, Tanh or HardSigmoid (also after moves: a detector's
score maps reshaped and concatenated before one Sigmoid), passes on ``f(Q(x))``, not ``Q(x)``: what the
quantization of ``x`` costs is ``E[(f(x) - f(Q(x)))^2]``. SiLU squashes the negative half to ``[-0.28, 0]``
and Sigmoid both tails, so clipping there costs little and a finer step pays; the squared error of ``x``
itself cannot tell.

On the calibration histogram (as :func:`onnxsq.calibration.stats.mse_errors` measures ``x``'s error):
inside the range a value at bin centre ``v`` costs ``f'(v)^2 step^2 / 12`` (uniform rounding error,
linearized; exact zeros cost nothing), beyond it ``(f(v) - f(limit))^2``. The shift and the
signedness of least error are chosen among the min/max-fitting shift and up to ``candidates`` finer
ones. Measured on the trained zoo (bench/fidelity.py; the README's table).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from ...calibration import pow2
from ...calibration.stats import BINS, TensorStats, least_error, least_error_format

Fn = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _hard_sigmoid(alpha: float, beta: float) -> Fn:
    return lambda x: np.clip(alpha * x + beta, 0.0, 1.0)


def _gate_key(node) -> tuple | None:
    """A hashable name of a gate node's elementwise function (Sigmoid, HardSigmoid, Tanh), or None."""
    if len(node.inputs) != 1:
        return None
    if node.op in ("Sigmoid", "Tanh"):
        return (node.op,)
    if node.op == "HardSigmoid":
        return ("HardSigmoid", float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))
    return None


def _function(key: tuple) -> Fn:
    """The function a :func:`reader_key` names."""
    if key[0] == "HardSwish":
        return _hard_swish
    if key[0] == "x*":
        g = _function(key[1])
        return lambda x: x * g(x)
    if key[0] == "HardSigmoid":
        return _hard_sigmoid(key[1], key[2])
    return _sigmoid if key[0] == "Sigmoid" else np.tanh


def _hard_swish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)


#: ops that only move, copy or drop elements (a Concat: of each data input), so an elementwise function
#: after them is the same function of their input's elements
MOVES = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Concat")


def reader_key(tensor, outputs: set[str], depth: int = 0) -> tuple | None:
    """A name of ``f`` where every reader of ``tensor`` (a graph variable) computes ``f(tensor)``: one gate
    (``g(x)``), or a gate and the Mul of ``x`` with it (``x * g(x)``: SiLU, HardSwish), or moves
    (:data:`MOVES`) into tensors that all have the same ``f`` (a detector's per-level score maps,
    reshaped and concatenated before their Sigmoid); else None."""
    if tensor.name in outputs or depth > 16:
        return None
    readers = list(tensor.outputs)
    if len(readers) == 1 and readers[0].op == "HardSwish":  # opset 14's op: x * HardSigmoid(x) in one
        return ("HardSwish",)
    gates = [n for n in readers if _gate_key(n) is not None]
    if len(readers) == 1 and gates:
        return _gate_key(gates[0])
    if len(readers) == 2 and len(gates) == 1:
        mul = next(n for n in readers if n is not gates[0])
        names = sorted(i.name for i in mul.inputs)
        if mul.op == "Mul" and names == sorted([tensor.name, gates[0].outputs[0].name]):
            return ("x*", _gate_key(gates[0]))
        return None
    moved = [n for n in readers if n.op in MOVES and (n.op == "Concat" or n.inputs[0] is tensor)]
    if not readers or len(moved) != len(readers):
        return None
    keys = {reader_key(o, outputs, depth + 1) for n in moved for o in n.outputs}
    return keys.pop() if len(keys) == 1 else None


def reader_function(tensor, outputs: set[str]) -> Fn | None:
    """``f`` of :func:`reader_key`, or None."""
    key = reader_key(tensor, outputs)
    return _function(key) if key is not None else None


def reader_functions(graph, tensors: Iterable[str]) -> dict[str, Fn]:
    """:func:`reader_function` of each of ``tensors`` in ``graph`` (an onnx-graphsurgeon graph) that has one."""
    found = graph.tensors()
    outputs = {o.name for o in graph.outputs}
    out = {}
    for t in tensors:
        f = reader_function(found[t], outputs) if t in found else None
        if f is not None:
            out[t] = f
    return out


def through_errors(stats: TensorStats, bits: int, signed: bool, f: Fn, *, candidates: int = 6
                   ) -> list[tuple[int, float]]:
    """``(shift, expected squared error of f)`` for the min/max-fitting shift and up to ``candidates`` finer."""
    lo, hi = (stats.min, stats.max) if stats.batches else (0.0, 0.0)
    base = pow2.fit_shift(min(lo, 0.0) if signed else max(lo, 0.0), max(hi, 0.0), bits, signed)
    qmin, qmax = pow2.int_range(bits, signed)
    width = stats.bin_width()
    centres = (np.arange(BINS) + 0.5) * width
    sides = []
    for hist, v in ((stats.hist_pos, centres), (stats.hist_neg, -centres)):
        n = hist.astype(np.float64)
        slope = (f(v + width / 2) - f(v - width / 2)) / width
        sides.append((n, v, slope * slope, f(v)))
    zeros_cost = float(stats.zeros) * float(((f(np.array(width / 2)) - f(np.array(-width / 2))) / width) ** 2)
    out = []
    for shift in range(base, min(base + candidates, pow2.MAX_SHIFT) + 1):
        step = math.ldexp(1.0, -shift)
        err = -zeros_cost * step * step / 12.0
        for (n, v, slope2, fv), limit in zip(sides, (qmax * step, qmin * step)):
            over = np.abs(v) > abs(limit)
            err += float(np.sum(n[~over] * slope2[~over])) * step * step / 12.0
            err += float(np.sum(n[over] * np.square(fv[over] - f(np.array(limit)))))
        out.append((shift, max(err, 0.0)))
    return out


def through_format(stats: TensorStats, bits: int, f: Fn, signed: bool | None = None) -> tuple[int, bool]:
    """``(shift, signed)`` of least expected error through ``f`` (``signed`` given: that one's shift)."""
    if signed is not None:
        return least_error(through_errors(stats, bits, signed, f))[0], signed
    return least_error_format(stats.nonnegative, lambda sign: through_errors(stats, bits, sign, f))
