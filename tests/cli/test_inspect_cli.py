"""`onnxsq inspect MODEL`: the per-layer table, totals, QDQ columns, --report, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

BIN = Path(sys.executable).parent / "onnxsq"


def _qdq_conv() -> onnx.ModelProto:
    q = np.array([[[[0]], [[3]]], [[[-2]], [[0]]]], np.int8)  # 2 of 4 weights zero
    inits = [numpy_helper.from_array(q, "w.q"), numpy_helper.from_array(np.array(2.0**-6, np.float32), "w.s"),
             numpy_helper.from_array(np.array(0, np.int8), "w.zp")]
    nodes = [helper.make_node("DequantizeLinear", ["w.q", "w.s", "w.zp"], ["w"], name="w_dq"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="qconv")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_table_totals_and_report(sample_model, run_cli, tmp_path, untouched):
    path = sample_model("digits_cnn")
    untouched(path)
    report = tmp_path / "r.json"
    result = run_cli("inspect", path, "--report", report)
    assert result.code == 0, result.err
    for text in ("conv1", "conv3", "fc", "Gemm", "16×1×3×3", "weight_params", "sparsity_denominator"):
        assert text in result.out
    data = json.loads(report.read_text())
    from onnxsq.inspect import inspect_model

    assert data == inspect_model(path).to_dict()
    assert data["summary"]["layers"] == 4


def test_qdq_columns(tmp_path, run_cli):
    path = tmp_path / "q.onnx"
    path.write_bytes(_qdq_conv().SerializeToString())
    report = tmp_path / "r.json"
    result = run_cli("inspect", path, "--report", report)
    assert result.code == 0, result.err
    assert "bits" in result.out and "shift" in result.out
    (cand,) = json.loads(report.read_text())["candidates"]
    # int8 values within [-3, 3] (zero point 0): a symmetric 3-bit weight in an int8 carrier
    assert cand["details"] == {"weight_shape": [2, 2, 1, 1], "params": 4, "zeros": 2, "zero_fraction": 0.5,
                               "bits": 3, "shift": 6}


def test_float_model_has_no_quantization_columns(tiny_models, run_cli):
    result = run_cli("inspect", tiny_models["conv"])
    assert result.code == 0 and "shift" not in result.out


def test_quiet_still_writes_the_report(tiny_models, run_cli, tmp_path):
    report = tmp_path / "r.json"
    result = run_cli("-q", "inspect", tiny_models["gemm"], "--report", report)
    assert result.code == 0 and result.out == ""
    assert json.loads(report.read_text())["summary"]["weight_params"] == 18


@pytest.mark.parametrize("problem", ["missing", "garbage", "report_dir_missing"])
def test_bad_input_is_one_line_exit_1(problem, tiny_models, run_cli, tmp_path):
    args = ["inspect", tiny_models["conv"]]
    if problem == "missing":
        args[1] = tmp_path / "missing.onnx"
    elif problem == "garbage":
        args[1] = tmp_path / "g.onnx"
        args[1].write_bytes(b"\x00garbage")
    else:
        args += ["--report", tmp_path / "no" / "r.json"]
    result = run_cli(*args)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsq: error:") and str(args[-1]) in lines[0]


def test_real_command(sample_model):
    proc = subprocess.run([str(BIN), "inspect", str(sample_model("jacintonet_seg"))], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ConvTranspose" in proc.stdout and "out5a_up" in proc.stdout


def _digits_npz(path: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n).astype(np.int64)
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.2
    for i, c in enumerate(y):  # the class is which row is bright
        x[i, 0, c % 8] += 0.8
    np.savez(path, x=x, y=y)
    return path


def _bits_columns(out: str) -> list[tuple[str, str, str]]:
    """(bits, in_shift, out_shift) of each table row, read from the rendered table."""
    header = next(line for line in out.splitlines() if "┃ name" in line)
    cols = [c.strip() for c in header.strip("┃").split("┃")]
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines()
            if line.startswith("│") and ("Conv" in line or "Gemm" in line)]
    rows = [r for r in rows if len(r) == len(cols)]  # the layer table's, not the summary's
    return [(r[cols.index("bits")], r[cols.index("in_shift")], r[cols.index("out_shift")]) for r in rows]


def test_weight_bits_4_after_quantize_shows_4_bits(sample_model, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "q4.onnx"
    np.savez(tmp_path / "c.npz", np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    res = subprocess.run([str(BIN), "quantize", str(sample_model("digits_cnn")), "--calib", str(tmp_path / "c.npz"),
                          "--weight-bits", "4", "-o", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(BIN), "inspect", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cols = _bits_columns(res.stdout)
    assert len(cols) == 4 and all(bits == "4" and i and o for bits, i, o in cols), cols


def test_qat_bits_4_keeps_out_shift_and_shows_4_bits(sample_model, tmp_path):
    from onnxsq import runtime

    if not runtime.has_training():
        pytest.skip("needs onnxruntime-training (the .venv environment)")
    out = tmp_path / "qat4.onnx"
    data = _digits_npz(tmp_path / "d.npz")
    res = subprocess.run([str(BIN), "train", str(sample_model("digits_cnn")), "--data", str(data),
                          "--stage", "qat", "--bits", "4", "--iters", "12", "--batch-size", "16", "-o", str(out), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(BIN), "inspect", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cols = _bits_columns(res.stdout)
    assert len(cols) == 4 and all(bits == "4" and i and o for bits, i, o in cols), cols
