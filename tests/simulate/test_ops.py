"""Hand-built power-of-two QDQ graphs, one op family each, against onnxruntime's optimized run (precise
kernels): Gemm (transB, per-channel), MatMul, Add at a shared shift, Concat, AveragePool with and
without counted padding, GlobalAveragePool, Clip, nearest Resize, Transpose/Reshape, Mul of two
tensors, negative requantization shifts (a left shift), saturation, and a float island (Sigmoid)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program


class G:
    """A tiny QDQ graph builder: ``q(x, shift, signed)`` quantizes a float tensor, ``dq(t)`` reads it."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def q(self, x: str, shift: int, signed: bool = True) -> str:
        scale = self.const(np.float32(2.0 ** -shift), "s")
        zp = self.const(np.int8(0) if signed else np.uint8(0), "z")
        q = self.node("QuantizeLinear", [x, scale, zp])
        return self.node("DequantizeLinear", [q, scale, zp])

    def w(self, values: np.ndarray, shift, axis: int = 0, dtype=np.int8) -> str:
        shift = np.asarray(shift)
        scale = self.const((2.0 ** -shift).astype(np.float32), "ws")
        zp = self.const(np.zeros(shift.shape, dtype), "wz")
        return self.node("DequantizeLinear", [self.const(values.astype(dtype), "w"), scale, zp],
                         **({"axis": axis} if shift.ndim else {}))

    def model(self, x_shape, out: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 7
        return m


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
    return g.q(g.node("Sigmoid", [x]), 7)


CASES = {"gemm": _gemm, "matmul_add": _matmul_add, "pools": _pools, "clip_resize": _clip_resize,
         "mul_left_shift": _mul_left_shift, "sigmoid_island": _island}


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
    assert ("float" in kinds) == (case == "sigmoid_island")
