"""sparsity: zero counts per layer weight and totals over stated denominators."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsq.sparsity import (
    array_stats,
    constant_tensors,
    count_zeros,
    parameter_totals,
    standard_totals,
    totals,
    weight_stats,
)


def make_model() -> onnx.ModelProto:
    wa = np.array([[[[0.0]]], [[[1.0]]], [[[-0.0]]], [[[2.0]]]], np.float32)  # 2 zeros of 4 (-0.0 counts)
    ws = np.zeros((4, 4, 1, 1), np.float32)
    ws[0, 0] = 1.0  # 15 zeros of 16, shared by two convs
    wfc = np.array([[0, 1, 0, 1], [1, 1, 1, 1]], np.float32)  # 2 of 8
    q = np.array([[3, 3, 5], [3, 4, 3]], np.int8)  # zero point 3 → 4 of 6 dequantize to 0
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["a", "ws"], ["b"], name="conv_s1"),
        helper.make_node("Conv", ["b", "ws"], ["c"], name=""),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Constant", [], ["wfc"], value=numpy_helper.from_array(wfc, "wfc")),
        helper.make_node("Gemm", ["f", "wfc", "bias"], ["y"], name="fc", transB=1),
        helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["wq"], name="dq"),
        helper.make_node("MatMul", ["y", "wq"], ["z"], name="mm"),
    ]
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(np.array([0, 0], np.float32), "bias"),
             numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.float32(0.5), "qs"),
             numpy_helper.from_array(np.int8(3), "qz")]
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    return model


def test_weight_stats_per_layer():
    stats = weight_stats(make_model())
    got = [(s.name, s.op, s.weight, s.shape, s.params, s.zeros) for s in stats]
    assert got == [("conv_a", "Conv", "wa", (4, 1, 1, 1), 4, 2),
                   ("conv_s1", "Conv", "ws", (4, 4, 1, 1), 16, 15),  # the second user is not counted again
                   ("fc", "Gemm", "wfc", (2, 4), 8, 2),
                   ("mm", "MatMul", "q", (2, 3), 6, 4)]
    assert stats[0].zero_fraction == 0.5
    assert [s.weight for s in weight_stats(make_model(), ops=["Gemm"])] == ["wfc"]


def test_totals_state_their_denominator():
    model = make_model()
    stats = weight_stats(model)
    conv, layers, params = standard_totals(model, stats)
    assert (conv.zeros, conv.params, conv.tensors) == (17, 20, 2) and "conv" in conv.label
    assert (layers.zeros, layers.params, layers.tensors) == (23, 34, 4)
    # all float constants: wa, ws, bias (2 zeros), qs, wfc (the int8 q is not a float parameter)
    assert (params.zeros, params.params, params.tensors) == (2 + 15 + 2 + 0 + 2, 4 + 16 + 2 + 1 + 8, 5)
    assert parameter_totals(model) == params
    t = totals(stats, ops=["Gemm", "MatMul"])
    assert t.params == 14 and "Gemm/MatMul" in t.label
    text = conv.describe()
    assert "85.00% zero" in text and "17 of 20" in text and "2 tensors" in text
    assert conv.as_dict()["zero_fraction"] == 0.85


def test_helpers():
    assert count_zeros(np.array([0.0, -0.0, np.nan, 1.0])) == 2
    assert set(constant_tensors(make_model())) == {"wa", "ws", "bias", "q", "qs", "qz", "wfc"}
    (s,) = array_stats({"conv1.weight": np.array([[0.0, 1.0]])}, op="Conv")
    assert (s.name, s.weight, s.params, s.zeros, s.shape) == ("conv1.weight", "conv1.weight", 2, 1, (1, 2))
    assert totals([]).zero_fraction == 0.0
