"""HardSigmoid, HardSwish and PRelu rewritten for training (no gradient in onnxruntime-training 1.19): same values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")

from onnxsq.graph import UniqueNames
from onnxsq.runtime import make_session
from onnxsq.training.rewrites import REWRITES


@pytest.mark.parametrize(("op", "attrs"), [("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                                           ("HardSwish", {})])
def test_the_rewrite_computes_the_op(op, attrs):
    node = helper.make_node(op, ["x"], ["y"], name="act", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    x = {"x": np.linspace(-6, 6, 30, dtype=np.float32).reshape(2, 3, 5)}
    want = make_session(model).run(None, x)[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    nodes, how = REWRITES[op](rewritten, rewritten.graph.node[0], {}, UniqueNames(rewritten))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    onnx.checker.check_model(rewritten)
    assert op not in {n.op_type for n in rewritten.graph.node} and "Relu" in how
    np.testing.assert_allclose(make_session(rewritten).run(None, x)[0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("slope_shape", [(), (1,), (3, 1, 1), (1, 3, 1, 1), (5,)])
def test_prelu_is_relu_minus_slope_times_relu_of_minus_x_bit_for_bit(slope_shape):
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    slope = rng.uniform(-0.5, 1.5, slope_shape).astype(np.float32)
    node = helper.make_node("PRelu", ["x", "a"], ["y"], name="prelu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5])],
                              [numpy_helper.from_array(slope, "a")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    x = rng.normal(0, 3, (2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, 1e-40]  # zeros and a denormal
    want = make_session(model).run(None, {"x": x})[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    nodes, how = REWRITES["PRelu"](rewritten, rewritten.graph.node[0], {}, UniqueNames(rewritten))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    onnx.checker.check_model(rewritten)
    assert "PRelu" not in {n.op_type for n in nodes} and "a" in {i for n in nodes for i in n.input}
    got = make_session(rewritten).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)  # exact, not within a tolerance (a zero's sign aside)
    np.testing.assert_array_equal(got, np.where(x > 0, x, slope * x))


@pytest.mark.parametrize(("kernel", "strides"), [((3, 2), (3, 2)), ((2, 2), (1, 1))])
def test_an_unpadded_average_pool_is_a_depthwise_conv_with_a_mean_kernel(kernel, strides):
    from onnxsq.training.rewrites import static_shapes

    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=list(kernel), strides=list(strides))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    x = {"x": np.random.default_rng(0).normal(0, 1, (1, 4, 9, 8)).astype(np.float32)}
    want = make_session(model).run(None, x)[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    nodes, _ = REWRITES["AveragePool"](rewritten, rewritten.graph.node[0], static_shapes(rewritten),
                                       UniqueNames(rewritten))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    assert [n.op_type for n in nodes] == ["Conv"]
    np.testing.assert_allclose(make_session(rewritten).run(None, x)[0], want, rtol=1e-5, atol=1e-6)
    padded = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="unpadded"):
        REWRITES["AveragePool"](rewritten, padded, static_shapes(model), UniqueNames(rewritten))
