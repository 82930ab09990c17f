"""training.export on its own: the trained values go into the user's own graph, nothing else changes."""

from __future__ import annotations

import numpy as np
from builders import build_conv_model
from onnx import numpy_helper

from onnxsq.training.export import export_trained


def test_only_the_named_initializers_change_and_keep_their_dtype_and_shape():
    model = build_conv_model(dtype=np.float16)
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    trained = {"conv.weight": np.full(before["conv.weight"].size, 0.5, np.float64), "bn.mean": np.arange(4.0)}
    out = export_trained(model, trained)
    after = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert after["conv.weight"].dtype == np.float16 and after["conv.weight"].shape == before["conv.weight"].shape
    assert np.all(after["conv.weight"] == 0.5) and np.array_equal(after["bn.mean"], np.arange(4.0, dtype=np.float16))
    assert all(np.array_equal(after[k], v) for k, v in before.items() if k not in trained)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    assert (out.ir_version, list(out.opset_import)) == (model.ir_version, list(model.opset_import))
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), before["conv.weight"])  # input kept
