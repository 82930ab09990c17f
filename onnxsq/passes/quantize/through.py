"""Range choice through the function that reads a tensor (``method`` ``mse`` / ``auto``).

A Conv whose output only a SiLU reads (``x * Sigmoid(x)``: YOLO-style detectors), a HardSwish (the op, or
spelled ``x * HardSigmoid(x)``), a GELU (the op, or spelled ``x * (1 + erf(x / sqrt 2))``, times 0.5 before
or after: PyTorch's and paddle2onnx's exports of transformer MLPs), or only a Sigmoid, Tanh or HardSigmoid
(also after moves: a detector's score maps reshaped and concatenated before one Sigmoid), passes on
``f(Q(x))``, not ``Q(x)``: what the quantization of ``x`` costs is ``E[(f(x) - f(Q(x)))^2]``. SiLU squashes
the negative half to ``[-0.28, 0]`` and GELU to ``[-0.17, 0]``, Sigmoid both tails, so clipping there costs
little and a finer step pays; the squared error of ``x`` itself cannot tell. A LeakyRelu or a PRelu with a
constant slope (MTCNN-style nets: a Conv's output only a PRelu reads, when the target does not fuse it,
:mod:`.placement_fuse`) scales the negative half's error by ``alpha**2``; a per-channel slope by its largest
square (the histogram is the whole tensor's: the mean square let the channels of steep slopes clip,
mtcnn_rnet -1.9 dB); positively homogeneous, so scale alignment carries it (:func:`homogeneous`).

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


def _leaky_key(node, tensor) -> tuple | None:
    """("Leaky", alpha) where ``node`` is a LeakyRelu of ``tensor`` or a PRelu of it with a constant slope (its
    largest magnitude), else None."""
    if node.op == "LeakyRelu" and len(node.inputs) == 1:
        return ("Leaky", float(node.attrs.get("alpha", 0.01)))
    if node.op != "PRelu" or len(node.inputs) != 2 or node.inputs[0] is not tensor:
        return None
    from ...graph import const_value, is_const

    slope = node.inputs[1]
    if not is_const(slope):
        return None
    a = np.asarray(const_value(slope), np.float64)
    return ("Leaky", float(np.max(np.abs(a)))) if a.size else None


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none, and a histogram's error needs no more."""
    x = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _function(key: tuple) -> Fn:
    """The function a :func:`reader_key` names."""
    if key[0] == "HardSwish":
        return _hard_swish
    if key[0] == "Gelu":
        return _gelu_tanh if key[1:] == ("tanh",) else _gelu
    if key[0] == "x*":
        g = _function(key[1])
        return lambda x: x * g(x)
    if key[0] == "HardSigmoid":
        return _hard_sigmoid(key[1], key[2])
    if key[0] == "Leaky":
        return _leaky(key[1])
    return _sigmoid if key[0] == "Sigmoid" else np.tanh


def _leaky(alpha: float) -> Fn:
    def f(x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, x, alpha * x)

    f.homogeneous = True  # f(a x) = a f(x) for a > 0: a scale-alignment factor passes through it
    return f


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
    if len(readers) == 1 and readers[0].op == "Gelu" and len(readers[0].inputs) == 1:  # opset 20's op
        return ("Gelu", str(readers[0].attrs.get("approximate", "none")))
    if len(readers) == 2 and spelled_gelu(tensor):
        return ("Gelu", "none")
    if len(readers) == 1 and (leaky := _leaky_key(readers[0], tensor)) is not None:
        return leaky
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


def _scalar(t) -> float | None:
    from ...graph import const_value, is_const

    if not is_const(t):
        return None
    v = np.asarray(const_value(t))
    return float(v.reshape(-1)[0]) if v.size == 1 else None


def _only_reader(t, op: str):
    """``t``'s one reader where it is an ``op`` (else None)."""
    return t.outputs[0] if len(t.outputs) == 1 and t.outputs[0].op == op else None


def _near(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-3 * abs(want)


def _other(node, t):
    """The input of a two-input ``node`` that is not ``t`` (None where both are)."""
    ins = [i for i in node.inputs if i is not t]
    return ins[0] if len(node.inputs) == 2 and len(ins) == 1 else None


def spelled_gelu(x) -> bool:
    """Whether ``x``'s two readers compute ``x * (1 + erf(x / sqrt 2))`` (times 0.5 before or after): ``Div`` by
    sqrt 2 or ``Mul`` by 1/sqrt 2, ``Erf``, ``Add`` of 1, and a ``Mul`` of x with that (or of ``x * 0.5``)."""
    arg = next((n for n in x.outputs if len(n.inputs) == 2 and n.inputs[0] is x and (
        (n.op == "Div" and _near(_scalar(n.inputs[1]), math.sqrt(2.0)))
        or (n.op == "Mul" and _near(_scalar(n.inputs[1]), math.sqrt(0.5))))), None)
    erf = _only_reader(arg.outputs[0], "Erf") if arg is not None else None
    one = _only_reader(erf.outputs[0], "Add") if erf is not None else None
    if one is None or not _near(_scalar(_other(one, erf.outputs[0])), 1.0):
        return False
    h = one.outputs[0]
    mul = next(n for n in x.outputs if n is not arg)
    if mul.op != "Mul" or len(mul.inputs) != 2:
        return False
    if _other(mul, x) is h:  # x * (1 + erf): the 0.5 may follow
        return True
    half = _near(_scalar(_other(mul, x)), 0.5)  # (x * 0.5) * (1 + erf)
    last = _only_reader(mul.outputs[0], "Mul")
    return half and last is not None and _other(last, mul.outputs[0]) is h


def homogeneous(f: Fn) -> bool:
    """Whether ``f`` (of :func:`reader_function`) is positively homogeneous (LeakyRelu, PRelu)."""
    return bool(getattr(f, "homogeneous", False))


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
