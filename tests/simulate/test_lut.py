"""Look-up tables against plain-Python oracles: exact ops (LeakyRelu by a power of two, a decomposed
HardSwish, a per-channel multiply) code by code with fractions, Sigmoid/Tanh against ``math`` (ties
aside), the per-position look-up against loops, and what is not a table."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from simulate_helpers import G

from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.islands import FloatRunner
from onnxsq.simulate.lut import Table, build_table
from onnxsq.simulate.program import load_program
from onnxsq.simulate.rounding import ROUNDINGS, int_limits


def _round(value: Fraction, rounding: str) -> int:
    fl = value.numerator // value.denominator
    rem = value - fl
    if rounding == "floor" or rem < Fraction(1, 2):
        return fl
    if rem > Fraction(1, 2):
        return fl + 1
    return {"half-even": fl + (fl % 2), "half-up": fl + 1, "half-away": fl + 1 if value > 0 else fl}[rounding]


def _table(build, in_shift=3, out_shift=4, signed_out=True, rounding="half-even"):
    g = G()
    x = g.q("x", in_shift)
    out = g.node("Identity", [g.q(build(g, x), out_shift, signed=signed_out)])
    program = load_program(g.model([2, 3, 4], out))
    (layer,) = [lay for lay in program.layers if lay.kind == "lut"]
    runner = FloatRunner(program.opsets, program.float_types, program.ir_version)
    return program, layer, build_table(program, layer, runner, rounding)


def _oracle(fn, in_shift, out_shift, signed_out, rounding):
    lo, hi = int_limits(8, signed_out)
    return [min(hi, max(lo, _round(fn(Fraction(c, 2 ** in_shift)) * 2 ** out_shift, rounding)))
            for c in range(-128, 128)]


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_exact_ops_code_by_code(rounding):
    _, _, t = _table(lambda g, x: g.node("LeakyRelu", [x], alpha=0.25), 3, 4, True, rounding)
    assert t.low == -128 and t.values.tolist() == _oracle(lambda v: v if v >= 0 else v / 4, 3, 4, True, rounding)

    def hswish(g, x):
        c = g.node("Clip", [g.node("Add", [x, g.const(np.float32(3))]), g.const(np.float32(0)),
                            g.const(np.float32(6))])
        return g.node("Div", [g.node("Mul", [x, c]), g.const(np.float32(4))])  # /4: exact in float
    _, _, t = _table(hswish, 4, 3, True, rounding)
    assert t.values.tolist() == _oracle(lambda v: v * min(max(v + 3, 0), 6) / 4, 4, 3, True, rounding)


def test_saturation_is_flagged_per_entry():
    _, _, t = _table(lambda g, x: g.node("Mul", [x, g.const(np.float32(8))]), 3, 4, False)
    want = _oracle(lambda v: v * 8, 3, 4, False, "half-even")
    assert t.values.tolist() == want
    raw = [_round(Fraction(c, 8) * 8 * 16, "half-even") for c in range(-128, 128)]
    assert t.clipped.tolist() == [r != w for r, w in zip(raw, want)]


@pytest.mark.parametrize("op,fn", [("Sigmoid", lambda v: 1 / (1 + math.exp(-v))), ("Tanh", math.tanh)])
def test_transcendental_tables_against_math(op, fn):
    _, _, t = _table(lambda g, x: g.node(op, [x]), 4, 7)
    for c, got in zip(range(-128, 128), t.values.tolist()):
        exact = fn(c / 16) * 128
        if abs(exact - math.floor(exact) - 0.5) > 1e-4:  # away from a tie float32 cannot decide
            assert got == max(-128, min(127, round(exact))), c


def test_per_channel_lookup_matches_loops():
    slope = np.array([0.5, 0.25, 0.125], np.float32).reshape(3, 1)
    program, layer, t = _table(lambda g, x: g.node("PRelu", [x, g.const(slope)]), 3, 5)
    assert t.shape == (3, 1)
    q = np.random.default_rng(0).integers(-128, 128, (2, 3, 4)).astype(np.int32)
    got, _ = t.lookup(q)
    for b, ch, i in itertools.product(range(2), range(3), range(4)):
        v = Fraction(int(q[b, ch, i]), 8)
        want = _round((v if v >= 0 else v * Fraction(float(slope[ch, 0]))) * 32, "half-even")
        assert got[b, ch, i] == max(-128, min(127, want))
    with pytest.raises(ValueError, match="broadcast"):
        t.lookup(q[:, :2])


def test_lookup_indexes_by_code():
    t = Table(np.arange(10, 266, dtype=np.int32).reshape(256), np.zeros(256, bool), -128)
    q = np.array([[-128, 0, 127]], np.int32)
    assert t.lookup(q)[0].tolist() == [[10, 138, 265]]


def test_not_a_table_stays_an_island():
    g = G()
    a, b = g.q("x", 3), g.q(g.node("Neg", ["x"]), 3)
    out = g.node("Identity", [g.q(g.node("Div", [a, g.node("Sigmoid", [b])]), 4)])  # two integer inputs
    program = load_program(g.model([2, 3, 4], out))
    div = next(lay for lay in program.layers if any(s.op == "Div" for s in lay.steps))
    assert div.kind == "float" and all(lay.kind != "lut" for lay in program.layers)
    Simulator(program).run({"x": np.ones((2, 3, 4), np.float32)})
