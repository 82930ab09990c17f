"""Training measures conv sparsity as onnxsq.sparsity does: Conv and ConvTranspose weights (CONV_OPS)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxsq.sparsity import CONV_OPS, standard_totals, weight_stats
from onnxsq.training.artifacts import classify_params
from onnxsq.training.config import TrainConfig
from onnxsq.training.sparsity import SparsityControl


def _conv_deconv_fc() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w[w < 0.3] = 0  # about 60% zeros
    d = rng.standard_normal((8, 2, 2, 2)).astype(np.float32)  # ConvTranspose group 2: [C_in, C_out/g, k, k]
    d[:, :, 0] = 0  # 50% zeros
    fc = rng.standard_normal((3, 4 * 8 * 8)).astype(np.float32)
    fc[:, ::2] = 0
    inits = [numpy_helper.from_array(w, "conv.weight"), numpy_helper.from_array(d, "up.weight"),
             numpy_helper.from_array(fc, "fc.weight")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "up.weight"], ["u"], name="up", strides=[2, 2], group=2),
             helper.make_node("Flatten", ["u"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.weight"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_training_conv_sparsity_is_the_one_the_tables_print():
    model = _conv_deconv_fc()
    _trainable, _frozen, weights, conv = classify_params(model)
    assert set(conv) == {"conv.weight", "up.weight"} and conv["up.weight"] == 2
    values = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    control = SparsityControl(TrainConfig(stage="sparse"), values, conv, list(weights), ops=weights)
    expected = standard_totals(model)[0]  # "conv weights (Conv/ConvTranspose)"
    assert control.total_sparsity(values) == expected.zero_fraction
    per_layer = {s.weight: s.zero_fraction for s in weight_stats(model, CONV_OPS)}
    assert control.layer_sparsity(values) == per_layer
    assert "fc.weight" not in control.layer_sparsity(values)  # fully connected weights stay out of it


def test_gradual_thresholding_leaves_conv_transpose_to_the_threshold_pass():
    model = _conv_deconv_fc()
    _t, _f, weights, conv = classify_params(model)
    values = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    up = values["up.weight"].copy()
    cfg = TrainConfig(stage="sparse", sparsity_target=0.95, sparsity_start_iter=0, sparsity_step_iter=1,
                      sparsity_start_factor=0.9, sparsity_low_ratio=1.0, sparsity_all_layers=True,
                      threshold_value_max=10.0,
                      threshold_value_maxratio=1.0)
    control = SparsityControl(cfg, values, conv, list(weights), ops=weights)
    before = control.layer_sparsity(values)["conv.weight"]
    control.after_update(1, values)
    assert control.layer_sparsity(values)["conv.weight"] > before
    assert np.array_equal(values["up.weight"], up)
