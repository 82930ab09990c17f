"""fold-constants: weights computed in the graph (onnx's light zoo: ConstantOfShape) become
initializers; Q/DQ and random ops stay; IR 3 keeps initializers listed as inputs; nothing printed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsq.passes.fold_constants import fold_constants
from onnxsq.runtime import make_session


def _computed_weight_model(ir_version: int = 8, opset: int = 13) -> onnx.ModelProto:
    """Conv whose weight is ConstantOfShape(shape) * Unsqueeze(scale): a weight computed in-graph."""
    shape = numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "w_shape")
    scale = numpy_helper.from_array(np.arange(1, 5, dtype=np.float32) / 10, "w_scale")
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w_fill"], name="fill",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Unsqueeze", ["w_scale", "axes"] if opset >= 13 else ["w_scale"], ["w_s4"], name="unsq",
                         **({} if opset >= 13 else {"axes": [1, 2, 3]})),
        helper.make_node("Mul", ["w_fill", "w_s4"], ["w"], name="mul_w"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("RandomNormal", [], ["noise"], name="rand", shape=[1], dtype=TensorProto.FLOAT),
        helper.make_node("Mul", ["noise", "zero"], ["z"], name="noise_times_zero"),
        helper.make_node("Add", ["y", "z"], ["out"], name="add_noise"),
    ]
    inits = [shape, scale, numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if ir_version < 4:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = helper.make_graph(
        nodes,
        "computed",
        inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"x": x})[0]


def test_computed_weight_becomes_an_initializer_exactly(capfd):
    model = _computed_weight_model()
    before = model.SerializeToString()
    result, report = fold_constants(model)
    assert model.SerializeToString() == before  # the input is not modified
    onnx.checker.check_model(result, full_check=True)
    ops = [n.op_type for n in result.graph.node]
    assert "ConstantOfShape" not in ops and "Unsqueeze" not in ops
    assert "mul_w" not in {n.name for n in result.graph.node}
    conv = next(n for n in result.graph.node if n.op_type == "Conv")
    assert conv.input[1] in {i.name for i in result.graph.initializer}
    assert "RandomNormal" in ops  # not one constant: kept
    kept = {c.name: c.reason for c in report.candidates if not c.changed}
    assert "rand" not in kept  # no inputs: not a candidate at all
    assert report.summary["folded"] == 3 and report.summary["left"] == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(result, x), _run(model, x))  # same kernels, same bits
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # gs and onnxruntime are kept quiet: the report says it


def test_ir3_model_lists_new_initializers_as_inputs():
    model = _computed_weight_model(ir_version=3, opset=9)
    result, report = fold_constants(model)
    assert result.ir_version == 3 and result.opset_import[0].version == 9
    inputs = {i.name for i in result.graph.input}
    assert all(i.name in inputs for i in result.graph.initializer)
    onnx.checker.check_model(result)
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(_run(result, x), _run(model, x))


def test_quantize_dequantize_weights_stay_integers():
    q = numpy_helper.from_array(np.array([[1, -2], [3, 4]], np.int8), "wq")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"], name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              initializer=[q, numpy_helper.from_array(np.float32(0.5), "s"),
                                           numpy_helper.from_array(np.int8(0), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    result, report = fold_constants(model)
    assert [n.op_type for n in result.graph.node] == ["DequantizeLinear", "MatMul"]
    (cand,) = report.candidates
    assert cand.name == "dq" and not cand.changed and "integer weights stay integers" in cand.reason


def test_nothing_to_fold_returns_the_model_untouched():
    from builders import build_conv_model

    model = build_conv_model()
    result, report = fold_constants(model)
    assert result is model and report.summary == {"candidates": 0, "folded": 0, "left": 0}
