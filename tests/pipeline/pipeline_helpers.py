"""Tiny models, data and recipes for the pipeline tests (imported by path: tests dirs have no __init__)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 3


def classifier(seed: int = 0, cin: int = 4, hw: int = 6, cout: int = 32) -> onnx.ModelProto:
    """input N×cin×hw×hw → Conv(cout, 3×3, pad 1) → BN → Relu → GlobalAveragePool → Flatten → Gemm → 3 logits.

    cout = 32 makes the conv eligible for the original's threshold rule (no >= 32).
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), "conv.bias"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, cout).astype(np.float32), "bn.scale"),
        numpy_helper.from_array(rng.normal(0, 0.2, cout).astype(np.float32), "bn.bias"),
        numpy_helper.from_array(rng.normal(0, 0.3, cout).astype(np.float32), "bn.mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, cout).astype(np.float32), "bn.var"),
        numpy_helper.from_array((rng.standard_normal((CLASSES, cout)) * 0.3).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_classifier",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", cin, hw, hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnxsq-tests")
    model.ir_version = 7
    return model


def write_npz(path: Path, n: int = 48, seed: int = 0, cin: int = 4, hw: int = 6) -> Path:
    """A learnable toy set: the class is which third of the channels... carries the bright blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n).astype(np.int64)
    x = rng.normal(0, 0.3, (n, cin, hw, hw)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, c % cin] += 1.5
    np.savez(path, x=x, y=y)
    return path


def setup(tmp: Path, *, seed: int = 0) -> dict[str, Path]:
    """model.onnx, train.npz and val.npz in ``tmp``."""
    model = tmp / "model.onnx"
    model.write_bytes(classifier(seed).SerializeToString())
    return {"model": model, "train": write_npz(tmp / "train.npz", 64, seed + 1),
            "val": write_npz(tmp / "val.npz", 32, seed + 2)}


CHEAP_RECIPE = """\
model = "model.onnx"

[data]
train = "train.npz"
val = "val.npz"

[[stage]]
kind = "threshold"
threshold_fraction_low = {fraction}

[[stage]]
kind = "optimize"

[[stage]]
kind = "quantize"
bits = {bits}
calib_count = 16
"""


def write_recipe(tmp: Path, text: str | None = None, name: str = "recipe.toml", **fmt) -> Path:
    path = tmp / name
    values = {"fraction": 0.5, "bits": 8, **fmt}
    path.write_text(text if text is not None else CHEAP_RECIPE.format(**values))
    return path
