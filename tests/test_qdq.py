"""onnxsq.qdq: the one reader of QDQ models (params and inspect both read through it)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build_conv_model
from onnx import TensorProto, helper, numpy_helper

from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.qdq import read_qdq


def test_reads_the_weights_and_activations_quantize_writes():
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    q, _ = quantize(build_conv_model(bn=False), feeds, config=QuantizeConfig(report_samples=0))
    dqs = read_qdq(q)
    weights = [d for d in dqs.values() if d.integers is not None]
    acts = [d for d in dqs.values() if d.quantize is not None]
    assert {d.node.input[0] for d in weights} >= {"conv.weight_quantized"}
    assert acts and all(d.float_input and d.values() is None for d in acts)
    assert all(np.all(d.scale > 0) for d in dqs.values())


@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_linear_of_a_constant_is_what_onnxruntime_computes(per_axis):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((4, 3)) * 3).astype(np.float32)
    scale = np.array([0.5, 0.25, 0.125, 1.0], np.float32) if per_axis else np.array(0.25, np.float32)
    zp = np.zeros(scale.shape, np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")]
    attrs = {"axis": 0} if per_axis else {}
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], name="q", **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq", **attrs),
             helper.make_node("Identity", ["q"], ["q_out"], name="id")]
    graph = helper.make_graph(nodes, "qdq", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3]),
                                                 helper.make_tensor_value_info("q_out", TensorProto.INT8, [4, 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["q_out"], {})[0]
    dq = read_qdq(model)["y"]
    assert dq.float_constant is not None and dq.axis == (0 if per_axis else None)
    np.testing.assert_array_equal(dq.values(), want)
