"""Tiny seeded models and helpers shared by the training tests (imported by name, not a fixture)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.runtime import has_training

TRAINING = has_training()
needs_training = pytest.mark.skipif(not TRAINING, reason="onnxruntime-training is not installed in this environment")


def cnn(channels: tuple[int, ...] = (8, 16), *, classes: int = 10, in_ch: int = 1, size: int = 8, seed: int = 0,
        opset: int = 13, ir: int = 7, batch: int | str = "N") -> onnx.ModelProto:
    """conv-BN-ReLU blocks → GlobalAveragePool → Flatten → Gemm, He-initialised, BN at identity."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin = "input", in_ch
    for i, c in enumerate(channels):
        w = (rng.standard_normal((c, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        bn = [numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}") for k, v in
              (("scale", np.ones(c)), ("bias", np.zeros(c)), ("mean", np.zeros(c)), ("var", np.ones(c)))]
        inits += bn
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                   kernel_shape=[3, 3]),
                  helper.make_node("BatchNormalization", [f"c{i}", *[t.name for t in bn]], [f"b{i}"], name=f"bn{i}"),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", c
    fc = (rng.standard_normal((classes, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc.weight"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias"),
    ]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, in_ch, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


class _Stop(Exception):
    pass


def interrupted_then_resumed(model: onnx.ModelProto, data, ckpt, stop_at: int, **cfg):
    """Train with checkpoints into ``ckpt``, interrupt at iteration ``stop_at``, resume from the checkpoint:
    returns the resumed run's ``(model, report)``."""
    import onnxsq

    def stop(step) -> None:
        if step["iteration"] == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        onnxsq.train(model, data, checkpoint=ckpt, on_step=stop, **cfg)
    return onnxsq.train(model, data, resume=ckpt, **cfg)


def values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
