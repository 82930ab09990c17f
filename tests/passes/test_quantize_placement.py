"""quantize's placement on its own (onnxsq.passes.quantize.placement): which tensors get a QDQ pair, which
share one scale, which layers fuse, and why the rest stays float."""

from __future__ import annotations

import onnx
from builders import Builder, build_conv_model

from onnxsq.graph import import_graph
from onnxsq.passes.quantize.placement import plan_qdq


def _graph(model: onnx.ModelProto):
    return import_graph(onnx.shape_inference.infer_shapes(model))  # placement reads the tensors' dtypes


def _layers(plan) -> dict[str, tuple[str, str]]:
    return {e.node: (e.action, e.reason) for e in plan.layers}


def test_conv_relu_quantizes_its_input_and_its_fused_output():
    plan = plan_qdq(_graph(build_conv_model(bn=False)))
    assert plan.activations == ["input", "output"] and plan.constants == []
    assert _layers(plan) == {"conv": ("quantized", ""), "relu": ("fused", "fused into conv")}
    (use,) = plan.weights
    assert (use.weight, use.bias, use.input, use.output, use.axis) == ("conv.weight", "conv.bias", "input",
                                                                        "output", None)


def test_per_channel_weights_and_biases_use_the_output_channel_axis():
    (use,) = plan_qdq(_graph(build_conv_model(bn=False)), per_channel=True).weights
    assert (use.axis, use.bias_axis) == (0, 0)


def test_an_excluded_layer_stays_float_and_says_why():
    plan = plan_qdq(_graph(build_conv_model(bn=False)), exclude=("conv",))
    assert plan.activations == [] and plan.weights == []
    assert _layers(plan) == {"conv": ("skipped", "excluded by --exclude 'conv'"),
                             "relu": ("skipped", "stays float: its input is not quantized")}


def test_max_pool_shares_its_input_scale_and_a_sigmoid_stays_float():
    b = Builder(seed=0)
    relu = b.node("Relu", [b.conv("x", 3, 4)])
    pool = b.node("MaxPool", [relu], kernel_shape=[2, 2], strides=[2, 2])
    out = b.node("Sigmoid", [pool])
    plan = plan_qdq(_graph(b.model({"x": [1, 3, 8, 8]}, [out])))
    assert plan.activations == ["x", relu, pool]
    assert plan.groups[pool] == plan.groups[relu] != plan.groups["x"]  # one scale for the pool and its input
    assert {e.op: e.action for e in plan.layers} == {"Conv": "quantized", "Relu": "fused", "MaxPool": "shared",
                                                      "Sigmoid": "skipped"}
    assert "no integer kernel for Sigmoid" in plan.layers[-1].reason

