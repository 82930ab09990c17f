"""Hand-built power-of-two QDQ graphs, one op family each, against onnxruntime's optimized run (precise
kernels): Gemm (transB, per-channel), MatMul, Add at a shared shift, Concat, AveragePool with and
without counted padding, GlobalAveragePool, Clip, nearest Resize, Transpose/Reshape, Mul of two
tensors, negative requantization shifts (a left shift), saturation, look-up tables (Sigmoid, SiLU, a
decomposed HardSwish, PRelu with a slope per position, Tanh then LeakyRelu) and a float island (Softmax)."""

from __future__ import annotations

import numpy as np
import pytest
from simulate_helpers import G

from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program


def _gemm(g: G, x: str) -> str:
    rng = np.random.default_rng(1)
    w = g.w(rng.integers(-127, 128, (6, 12)), [7, 8, 6, 7, 8, 7])
    b = g.w(rng.integers(-500, 500, 6), [11, 12, 10, 11, 12, 11], dtype=np.int32)  # s_x + s_w
    return g.q(g.node("Gemm", [x, w, b], transB=1), 3)


def _matmul_add(g: G, x: str) -> str:
    rng = np.random.default_rng(2)
    y = g.q(g.node("MatMul", [x, g.w(rng.integers(-127, 128, (12, 12)), 7)]), 4)
    return g.q(g.node("Relu", [g.node("Add", [y, x])]), 3, signed=False)


def _pools(g: G, x: str) -> str:
    x4 = g.q(g.node("Reshape", [x, g.const(np.array([2, 3, 2, 2], np.int64))]), 5)
    a = g.q(g.node("AveragePool", [x4], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), 5)
    b = g.q(g.node("AveragePool", [x4], kernel_shape=[2, 2], pads=[1, 1, 1, 1]), 6)
    c = g.q(g.node("Concat", [a, b], axis=1), 5)
    return g.q(g.node("Flatten", [g.node("GlobalAveragePool", [c])]), 7)


def _clip_resize(g: G, x: str) -> str:
    x4 = g.q(g.node("Reshape", [x, g.const(np.array([2, 3, 2, 2], np.int64))]), 5)
    c = g.q(g.node("Clip", [x4, g.const(np.float32(-0.5)), g.const(np.float32(1.5))]), 6)
    r = g.node("Resize", [c, "", g.const(np.array([1, 1, 2, 3], np.float32))], mode="nearest")
    return g.q(g.node("Transpose", [r], perm=[0, 2, 3, 1]), 6)


def _mul_left_shift(g: G, x: str) -> str:
    y = g.q(g.node("Mul", [x, x]), 1)  # product at shift 8: requantized by 7; then a left shift by 2
    return g.q(g.node("Relu", [y]), 3, signed=False)


def _island(g: G, x: str) -> str:
    return g.q(g.node("Softmax", [x], axis=-1), 7)


def _sigmoid(g: G, x: str) -> str:
    return g.q(g.node("Sigmoid", [x]), 7)


def _silu(g: G, x: str) -> str:  # x * sigmoid(x): both operands from the one DequantizeLinear
    return g.q(g.node("Mul", [x, g.node("Sigmoid", [x])]), 4)


def _hardswish_decomposed(g: G, x: str) -> str:  # x * clip(x + 3, 0, 6) / 6, as PaddleOCR exports it
    c = g.node("Clip", [g.node("Add", [x, g.const(np.float32(3))]), g.const(np.float32(0)), g.const(np.float32(6))])
    return g.q(g.node("Div", [g.node("Mul", [x, c]), g.const(np.float32(6))]), 4)


def _prelu_per_position(g: G, x: str) -> str:  # one slope per position of the last axis: a table each
    return g.q(g.node("PRelu", [x, g.const(np.linspace(0.05, 0.6, 12).astype(np.float32))]), 4)


def _tanh_leaky(g: G, x: str) -> str:
    return g.q(g.node("LeakyRelu", [g.node("Tanh", [x])], alpha=0.1), 6)


def _split_concat(g: G, x: str) -> str:  # Split's parts keep the input's shift; swapped and joined again
    from onnx import helper

    a, b = g.name("part"), g.name("part")
    g.nodes.append(helper.make_node("Split", [x, g.const(np.array([5, 7], np.int64))], [a, b], axis=1))
    return g.q(g.node("Concat", [b, a], axis=1), 3)


def _reduce_expand(g: G, x: str) -> str:  # a row sum (exact) broadcast back and added; a row max
    s = g.node("ReduceSum", [x, g.const(np.array([1], np.int64))], keepdims=1)
    e = g.node("Expand", [s, g.const(np.array([2, 12], np.int64))])
    return g.q(g.node("Add", [g.node("ReduceMax", [x], axes=[1], keepdims=1), e]), 1)


CASES = {"gemm": _gemm, "split_concat": _split_concat, "reduce_expand": _reduce_expand, "matmul_add": _matmul_add,
         "pools": _pools,
         "clip_resize": _clip_resize,
         "mul_left_shift": _mul_left_shift, "softmax_island": _island, "sigmoid_table": _sigmoid,
         "silu_table": _silu, "hardswish_decomposed_table": _hardswish_decomposed,
         "prelu_table": _prelu_per_position, "tanh_leaky_table": _tanh_leaky}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_equals_onnxruntime(case):
    g = G()
    x = g.q("x", 4)
    out = g.node("Identity", [CASES[case](g, x)])
    model = g.model([2, 12], out)
    program = load_program(model)
    sim = Simulator(program)
    session = ort_session(model, precise=True)
    rng = np.random.default_rng(0)
    for scale in (1.0, 3.0, 20.0):  # 20: most values saturate
        feed = {"x": (rng.standard_normal((2, 12)) * scale).astype(np.float32)}
        mine = sim.run(feed).outputs[out]
        theirs = session.run(None, feed)[0]
        np.testing.assert_array_equal(mine, theirs)
    kinds = {lay.kind for lay in program.layers}
    assert ("float" in kinds) == (case == "softmax_island")
    assert ("lut" in kinds) == case.endswith("_table")


def test_tables_travel_in_the_package(tmp_path):
    from onnxsq.simulate.package import read_package, write_package

    g = G()
    x = g.q("x", 4)
    out = g.node("Identity", [_prelu_per_position(g, _silu(g, x))])
    program = load_program(g.model([2, 12], out))
    assert [lay.kind for lay in program.layers].count("lut") == 2
    write_package(program, tmp_path / "pkg")
    back = read_package(tmp_path / "pkg")
    assert all(lay.table is not None for lay in back.layers if lay.kind == "lut")
    feed = {"x": (np.random.default_rng(3).standard_normal((2, 12)) * 4).astype(np.float32)}
    a, b = Simulator(program).run(feed), Simulator(back).run(feed)
    assert all(np.array_equal(a.ints[k], b.ints[k]) for k in a.ints)
