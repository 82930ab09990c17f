"""quantize --integer-only's placement (onnxsq.passes.quantize.placement_integer): elementwise chains of
one quantized tensor get a QuantizeLinear on what leaves them and none inside (look-up tables), Mul of
two tensors quantizes like Add, and what has no exact integer form stays float, saying so."""

from __future__ import annotations

import numpy as np
import onnx
from builders import Builder

from onnxsq.graph import import_graph
from onnxsq.passes.quantize.placement import plan_qdq


def _plan(b: Builder, outs: list[str], integer_only: bool = True):
    model = onnx.shape_inference.infer_shapes(b.model({"x": [1, 3, 8, 8]}, outs))
    return plan_qdq(import_graph(model), integer_only=integer_only)


def _actions(plan) -> dict[str, tuple[str, str]]:
    return {e.op: (e.action, e.reason) for e in plan.layers}


def test_silu_is_one_table_of_the_conv_output():
    b = Builder(seed=0)
    c = b.conv("x", 3, 4)
    silu = b.node("Mul", [c, b.node("Sigmoid", [c])])
    out = b.conv(silu, 4, 4)
    plan = _plan(b, [out])
    assert c in plan.activations and silu in plan.activations
    sig = next(e for e in plan.layers if e.op == "Sigmoid")
    assert sig.action == "fused" and "look-up table" in sig.reason and sig.output is None
    mul = next(e for e in plan.layers if e.op == "Mul")
    assert mul.action == "quantized" and mul.output == silu
    default = _plan(b, [out], integer_only=False)  # the default: Sigmoid and Mul left float
    assert _actions(default)["Sigmoid"][0] == "skipped"


def test_decomposed_hardswish_has_no_quantization_point_inside():
    b = Builder(seed=1)
    c = b.conv("x", 3, 4)
    a = b.const_op("Add", c, np.float32(3))
    clip = b.node("Clip", [a, b.const("lo", np.float32(0)), b.const("hi", np.float32(6))])
    hs = b.const_op("Div", b.node("Mul", [c, clip]), np.float32(6))
    plan = _plan(b, [b.conv(hs, 4, 4)])
    inside = {a, clip}
    assert not inside & set(plan.activations) and hs in plan.activations
    assert plan.constants == []  # the Add's 3 is no longer quantized: it is inside the table
    assert [e.action for e in plan.layers if e.op in ("Add", "Clip", "Mul", "Div")] == ["fused"] * 3 + ["quantized"]


def test_mul_of_two_tensors_is_an_integer_product_and_softmax_says_why():
    b = Builder(seed=2)
    c1, c2 = b.conv("x", 3, 4), b.conv("x", 3, 4)
    p = b.node("Mul", [c1, b.node("Relu", [c2])])
    sm = b.node("Softmax", [p], axis=1)
    plan = _plan(b, [sm, b.conv(p, 4, 4)])  # a layer reads the product: not the float tail
    mul = next(e for e in plan.layers if e.op == "Mul")
    assert mul.action == "quantized" and mul.output == p
    action, reason = _actions(plan)["Softmax"]
    assert action == "skipped" and "no exact integer form" in reason


def test_per_channel_multiply_and_relu_after_a_concat_is_a_table():
    b = Builder(seed=3)
    cat = b.node("Concat", [b.conv("x", 3, 4), b.conv("x", 3, 4)], axis=1)
    scaled = b.const_op("Mul", cat, np.linspace(0.5, 2, 8, dtype=np.float32).reshape(8, 1, 1))
    relu = b.node("Relu", [b.const_op("Add", scaled, np.full((8, 1, 1), 0.1, np.float32))])
    plan = _plan(b, [b.conv(relu, 8, 4)])
    assert relu in plan.activations and scaled not in plan.activations
    assert _actions(plan)["Relu"][0] == "quantized"


def test_integer_chains_keep_the_default_rules():
    b = Builder(seed=4)
    c = b.conv("x", 3, 4)
    r = b.node("Relu", [b.const_op("Add", b.node("MaxPool", [c], kernel_shape=[2, 2]), np.float32(1))])
    plan, default = _plan(b, [r]), _plan(b, [r], integer_only=False)
    assert plan.activations == default.activations and plan.constants == default.constants
