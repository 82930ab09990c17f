"""evaluate(): a model whose logits are its input, so the expected metrics are known exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsq
from onnxsq.data.classification import ArrayDataset
from onnxsq.errors import DataError


def _identity(shape) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "id",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def test_classification_accuracy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    y = np.argmax(x, axis=1)
    y[:10] = np.argsort(x[:10], axis=1)[:, -2]  # 10 second-best: wrong at top-1, right at top-5
    report = onnxsq.evaluate(_identity(["N", 8]), ArrayDataset(x, y), batch_size=16)
    assert report.pass_name == "eval"
    assert report.summary["top1"] == pytest.approx(0.8) and report.summary["top5"] == 1.0


def test_segmentation_iou_and_json(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    y = np.argmax(x, axis=1)
    y[0, 0, :] = 255  # ignored
    y[1, 1, 1] = (y[1, 1, 1] + 1) % 3  # one wrong pixel
    report = onnxsq.evaluate(_identity(["N", 3, 4, 5]), ArrayDataset(x, y), batch_size=2)
    s = report.summary
    assert s["pixels"] == 3 * 20 - 5 and s["pixel_accuracy"] == pytest.approx(1 - 1 / 55)
    assert 0.9 < s["mean_iou"] < 1.0 and len(s["per_class_iou"]) == 3
    path = report.write(tmp_path / "r.json")
    assert '"mean_iou"' in path.read_text()


def test_shape_mismatch_is_a_data_error():
    x = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(DataError, match="rejects a batch"):
        onnxsq.evaluate(_identity(["N", 3, 8, 8]), ArrayDataset(x, np.zeros((2, 4, 5), np.int64)))
