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
