"""Compiled layers (onnxsq.simulate.plan) compute exactly what the generic interpreter computes: the
same integers, the same saturation and accumulator statistics, for every kind of layer and for inputs
of another shape (a new plan); and the compiled requantizer against the exact integer one."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from simulate_helpers import G
from test_ops import CASES

from onnxsq.runtime import make_session
from onnxsq.simulate import plan as P
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.plan_tables import memory_order
from onnxsq.simulate.program import load_program
from onnxsq.simulate.rounding import requantize_saturate

RNG = np.random.default_rng(11)


def _conv(g: G, x: str, x_shift: int, *, k: int = 3, stride: int = 1, group: int = 1, dil: int = 1,
          bias: str = "", relu: bool = False, out_shift: int = 3, c: int = 4, m: int = 6,
          transposed: bool = False) -> str:
    """A Conv of ``x`` (``c`` channels at ``2**-x_shift``); ``bias``: "acc" at the accumulator's shift (added
    as is), "other" at another one (aligned by a shift: the generic kernel), "" none."""
    ws = RNG.integers(6, 9, m)
    if transposed:  # weights (C, M, k, k), per output channel along axis 1
        inputs = [x, g.w(RNG.integers(-127, 128, (c, m, k, k)), ws, axis=1)]
    else:
        inputs = [x, g.w(RNG.integers(-127, 128, (m, c // group, k, k)), ws, axis=0)]
    if bias:
        shifts = ws + x_shift if bias == "acc" else np.full(m, 9)
        inputs.append(g.w(RNG.integers(-3000, 3000, m), shifts, dtype=np.int32))
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[(k // 2) * dil] * 4, dilations=[dil, dil])
    if transposed:
        y = g.node("ConvTranspose", inputs, **attrs, output_padding=[stride - 1] * 2)
    else:
        y = g.node("Conv", inputs, **attrs, group=group)
    return g.q(g.node("Relu", [y]) if relu else y, out_shift, signed=not relu)


def _tail(g: G, y: str) -> str:
    """Pools, a residual Add, a Slice and a classifier after a convolution."""
    p = g.q(g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 3, signed=False)
    a = g.q(g.node("AveragePool", [p], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]), 4, signed=False)
    s = g.q(g.node("Relu", [g.node("Add", [p, a])]), 2, signed=False)
    sl = g.q(g.node("Slice", [s, g.const(np.array([1], np.int64)), g.const(np.array([5], np.int64)),
                              g.const(np.array([1], np.int64))]), 2, signed=False)
    gap = g.q(g.node("Flatten", [g.node("GlobalAveragePool", [sl])]), 5, signed=False)
    w = g.w(RNG.integers(-127, 128, (5, 4)), 7)
    b = g.w(RNG.integers(-500, 500, 5), 12, dtype=np.int32)
    return g.q(g.node("Gemm", [gap, w, b], transB=1), 4)


CONVS = {
    "taps": dict(bias="acc", relu=True),
    "taps_other_bias": dict(bias="other"),
    "taps_dilated": dict(dil=2, relu=True),
    "strided": dict(stride=2, bias="acc", relu=True),
    "pointwise": dict(k=1),
    "depthwise": dict(group=4, m=4, bias="acc", relu=True),
    "depthwise_strided": dict(group=4, m=4, stride=2),
    "grouped": dict(group=2, relu=True),  # no compiled form: the generic kernel inside the plan
    "transposed": dict(transposed=True, stride=2, bias="acc", relu=True),
    "transposed_dilated": dict(transposed=True, dil=2),
}


def _conv_model(case: str):
    g = G()
    y = _conv(g, g.q("x", 4), 4, **CONVS[case])
    if case == "taps":  # on unsigned (Relu'd) input, then pools, a residual Add, a Slice, a classifier
        y = _tail(g, _conv(g, y, 3, bias="acc", relu=True, c=6))
    out = g.node("Identity", [y])
    return g.model([None, 4, 9, 9], out), out


def _same(a: Simulator, b: Simulator, feeds: list[dict]) -> None:
    for feed in feeds:
        ra, rb = a.run(feed), b.run(feed)
        assert ra.ints.keys() == rb.ints.keys()
        for k in ra.ints:
            assert ra.ints[k].dtype == rb.ints[k].dtype and np.array_equal(ra.ints[k], rb.ints[k]), k
        for k in ra.outputs:
            np.testing.assert_array_equal(ra.outputs[k], rb.outputs[k])
    for name, st in a.stats.items():
        assert st == b.stats[name], name


def _feeds(shape, scales=(1.0, 3.0, 20.0)) -> list[dict]:
    rng = np.random.default_rng(4)
    return [{"x": (rng.standard_normal(shape) * s).astype(np.float32)} for s in scales]


@pytest.mark.parametrize("case", sorted(CONVS))
def test_compiled_convolutions_equal_generic_and_onnxruntime(case):
    model, out = _conv_model(case)
    program = load_program(model)
    compiled, generic = Simulator(program), Simulator(program, compiled=False)
    feeds = _feeds((2, 4, 9, 9))
    _same(compiled, generic, feeds + feeds)
    kinds = ("int", "lut", "float")
    assert [lay.name for lay in program.layers if lay.kind in kinds and compiled._plans[lay.name].run is None] == []
    session = ort_session(model, precise=True)
    if CONVS[case].get("bias") == "other" and _ort_version() < (1, 20):
        # onnxruntime 1.19 fuses a bias at another shift than s_in + s_w into QLinearConv as if it were at
        # s_in + s_w (its output is off by the bias's error); its unoptimized run is ONNX's semantics
        session = make_session(model)
    for feed in feeds:
        np.testing.assert_array_equal(compiled.run(feed).outputs[out], session.run(None, feed)[0])


def _ort_version() -> tuple[int, ...]:
    import onnxruntime

    return tuple(int(p) for p in onnxruntime.__version__.split(".")[:2])


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_ops_equal_generic(case):
    g = G()
    out = g.node("Identity", [CASES[case](g, g.q("x", 4))])
    program = load_program(g.model([2, 12], out))
    _same(Simulator(program), Simulator(program, compiled=False), _feeds((2, 12)) * 2)


def test_another_shape_makes_another_plan():
    model, _ = _conv_model("taps")
    program = load_program(model)
    compiled, generic = Simulator(program), Simulator(program, compiled=False)
    _same(compiled, generic, _feeds((2, 4, 9, 9)) + _feeds((1, 4, 11, 7)) + _feeds((2, 4, 9, 9)))
    conv = next(lay for lay in program.layers if lay.kind == "int")
    assert compiled._plans[conv.name].ints[0][1][0] == 2  # the last shape's plan


@pytest.mark.parametrize("rounding, acc_bits", [("half-up", 32), ("half-away", 32), ("floor", 32),
                                                ("half-even", 16)])
def test_roundings_and_narrow_accumulators_compile_exactly(rounding, acc_bits):
    model, _ = _conv_model("taps")
    program = load_program(model)
    compiled = Simulator(program, rounding, acc_bits)
    _same(compiled, Simulator(program, rounding, acc_bits, compiled=False), _feeds((2, 4, 9, 9)) * 2)
    if acc_bits == 16:
        assert any(st.acc_overflow for st in compiled.stats.values())


@pytest.mark.parametrize("rounding", ["half-even", "floor"])
def test_float_requantizer_equals_the_exact_one(rounding):
    """Ties at every shift, per-channel shifts (negative: a left shift), an average's divisors."""
    v = np.concatenate([RNG.integers(-(1 << 23), 1 << 23, 4000), np.arange(-64, 65) * 8 + 4,
                        np.array([(1 << 24) - 1, -(1 << 24) + 1])]).reshape(1, -1, 1)
    cases = [(np.asarray(5), np.asarray(1)), (np.asarray(0), np.asarray(1)),
             (np.array([3, -2, 0, 7]).reshape(1, 4, 1), np.asarray(1)),
             (np.asarray(2), np.asarray(9)), (np.asarray(-1), np.array([1, 3, 6, 9]).reshape(1, 4, 1))]
    for k, div in cases:
        x = v[:, :4124].reshape(1, 4, -1)
        for bits, signed in ((8, True), (16, False), (32, True)):
            stats = _Stats()
            fn = P._float_requant(k, div, (-(1 << 24) + 1, (1 << 24) - 1), _limits(bits, signed), rounding, stats)
            assert fn is not None
            want, n = requantize_saturate(x, k, rounding, div, bits, signed)
            got = fn(x)
            np.testing.assert_array_equal(got, want)
            assert (stats.saturated, stats.elements) == (n, x.size)


class _Stats:
    saturated = 0
    elements = 0


def _limits(bits: int, signed: bool) -> tuple[int, int]:
    from onnxsq.simulate.rounding import int_limits

    return int_limits(bits, signed)


def test_memory_order_finds_a_channels_last_layout():
    base = np.arange(2 * 8 * 9 * 64).reshape(2, 8, 9, 64)
    nchw = base.transpose(0, 3, 1, 2)
    flat, back = memory_order(nchw)
    assert flat.flags.c_contiguous and np.shares_memory(flat, base)
    np.testing.assert_array_equal(flat.transpose(back), nchw)
    same, none = memory_order(np.ascontiguousarray(nchw))
    assert none is None and same.shape == nchw.shape


@pytest.mark.parametrize("zero", [np.int16(0), np.uint16(0), np.uint8(0)])
def test_compiled_tables_of_wide_and_unsigned_codes(zero):
    """A table indexed by the codes' own bits (a 16-bit one too, signed and not) against the generic one."""
    g = G()
    scale = g.const(np.float32(2.0 ** -8), "s")
    zp = g.const(zero, "z")
    x = g.node("DequantizeLinear", [g.node("QuantizeLinear", ["x", scale, zp]), scale, zp])
    out = g.node("Identity", [g.q(g.node("Tanh", [x]), 7)])  # tanh -> 1 saturates 127
    program = load_program(g.model([2, 3, 40, 40], out))
    assert [lay.kind for lay in program.layers].count("lut") == 1
    _same(Simulator(program), Simulator(program, compiled=False), _feeds((2, 3, 40, 40), (0.1, 1.0, 60.0)) * 2)


def test_a_wide_product_takes_float32_where_its_data_allow():
    """A Gemm over 4096 inputs can reach 2**25 (float64 statically); small inputs take float32, large
    ones float64 (an input of the weights' signs sums past 2**24): exact, equal to the generic path
    and onnxruntime."""
    g = G()
    weights = RNG.integers(-127, 128, (3, 4096))
    out = g.node("Identity", [g.q(g.node("Gemm", [g.q("x", 4), g.w(weights, 7)], transB=1), 0)])
    model = g.model([2, 4096], out)
    program = load_program(model)
    compiled = Simulator(program)
    aligned = {"x": np.stack([np.sign(weights[0]), -np.sign(weights[1])]).astype(np.float32) * 8}
    feeds = _feeds((2, 4096), (0.05, 30.0)) + [aligned]
    _same(compiled, Simulator(program, compiled=False), feeds * 2)
    session = ort_session(model, precise=True)
    for feed in feeds:
        np.testing.assert_array_equal(compiled.run(feed).outputs[out], session.run(None, feed)[0])
    assert max(st.acc_max for st in compiled.stats.values()) >= 1 << 24


def test_a_wide_convolution_takes_float32_where_its_data_allow():
    """A 3x3 Conv over 256 channels can reach 2**24 (float64 statically): float32 for small inputs,
    float64 for an input of the weights' signs."""
    g = G()
    weights = RNG.integers(-127, 128, (2, 256, 3, 3))
    y = g.node("Conv", [g.q("x", 4), g.w(weights, 7)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    out = g.node("Identity", [g.q(y, 0)])
    model = g.model([1, 256, 3, 3], out)
    program = load_program(model)
    compiled = Simulator(program)
    aligned = {"x": (np.sign(weights[:1]) * 8).astype(np.float32)}  # the centre output: 127 * sum|w|
    feeds = _feeds((1, 256, 3, 3), (0.05, 30.0)) + [aligned]
    _same(compiled, Simulator(program, compiled=False), feeds * 2)
    session = ort_session(model, precise=True)
    for feed in feeds:
        np.testing.assert_array_equal(compiled.run(feed).outputs[out], session.run(None, feed)[0])
    assert max(st.acc_max for st in compiled.stats.values()) >= 1 << 24


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "AveragePool", "MaxPool"])
def test_a_pool_of_a_compiled_product_in_one_layer(pool):
    """Conv then a pool before the layer's quantizer: the pool reads the product's float accumulator."""
    g = G()
    y = g.node("Conv", [g.q("x", 4), g.w(RNG.integers(-127, 128, (5, 4, 3, 3)), 7)], kernel_shape=[3, 3],
               pads=[1, 1, 1, 1])
    attrs = {} if pool == "GlobalAveragePool" else dict(kernel_shape=[3, 3], strides=[2, 2])
    out = g.node("Identity", [g.q(g.node(pool, [g.node("Relu", [y])], **attrs), 2, signed=False)])
    model = g.model([2, 4, 9, 9], out)
    program = load_program(model)
    compiled = Simulator(program)
    feeds = _feeds((2, 4, 9, 9))
    _same(compiled, Simulator(program, compiled=False), feeds * 2)
    session = ort_session(model, precise=True)
    for feed in feeds:
        np.testing.assert_array_equal(compiled.run(feed).outputs[out], session.run(None, feed)[0])


def test_a_failing_plan_falls_back_to_the_generic_path(caplog):
    model, out = _conv_model("taps")
    program = load_program(model)
    compiled, generic = Simulator(program), Simulator(program, compiled=False)
    feeds = _feeds((2, 4, 9, 9))
    _same(compiled, generic, feeds[:1])
    conv = next(lay for lay in program.layers if lay.kind == "int")

    def broken(ints, feeds):
        raise FloatingPointError("boom")

    compiled._plans[conv.name] = P.Plan(compiled._plans[conv.name].ints, (), broken)
    name = "onnxsq.simulate.execute"  # the CLI's tests leave "onnxsq" at ERROR and not propagating
    log = logging.getLogger(name)
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=name):
            for feed in feeds:
                np.testing.assert_array_equal(compiled.run(feed).outputs[out], generic.run(feed).outputs[out])
    finally:
        log.removeHandler(caplog.handler)
    assert "compiled form failed (FloatingPointError: boom)" in caplog.text
    assert compiled._plans[conv.name] is P.NOPLAN
