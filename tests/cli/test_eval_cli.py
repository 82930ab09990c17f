"""``onnxsq eval``: metrics on the terminal and in --report JSON; bad data is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxsq.cli.main import run


def _identity(path, shape):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "id",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(path))
    return path


def test_eval_segmentation_report(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)
    y = np.argmax(x, axis=1)
    y[0, 0, 0] = 255
    np.savez(tmp_path / "v.npz", x=x, y=y)
    model = _identity(tmp_path / "m.onnx", ["N", 3, 2, 3])
    assert run(["eval", str(model), "--data", str(tmp_path / "v.npz"), "--report", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["mean_iou"] == 1.0 and summary["pixel_accuracy"] == 1.0 and summary["pixels"] == 23
    assert "mean_iou" in capsys.readouterr().out


def test_eval_classification_subprocess_and_errors(tmp_path):
    x = np.eye(8, dtype=np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=np.arange(8))
    np.savez(tmp_path / "bad.npz", x=x, y=np.zeros((8, 2, 2, 2), np.int64))
    model = _identity(tmp_path / "m.onnx", ["N", 8])
    cmd = [sys.executable, "-m", "onnxsq.cli.main", "eval", str(model), "--report", str(tmp_path / "r.json")]
    ok = subprocess.run([*cmd, "--data", str(tmp_path / "v.npz")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["top1"] == 1.0
    bad = subprocess.run([*cmd, "--data", str(tmp_path / "bad.npz")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "fits no task" in bad.stderr and "Traceback" not in bad.stderr
