"""`onnxsq verify A B`: per-output table, --data, tolerances, exit 1 beyond tolerance, inputs untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_shapes import shared_symbol_model, spatial_after, strided_model  # pythonpath = tests

pytest.importorskip("onnxruntime")

BIN = Path(sys.executable).parent / "onnxsq"


@pytest.fixture
def pair(tmp_path, conv_model, untouched):
    """a.onnx and b.onnx (b's conv bias shifted by 1e-3, so every output moves by exactly 1e-3)."""
    a = conv_model(bn=False, relu=False)
    b = onnx.ModelProto()
    b.CopyFrom(a)
    for t in b.graph.initializer:
        if t.name == "conv.bias":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(1e-3), t.name))
    paths = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path, model in zip(paths, (a, b)):
        path.write_bytes(model.SerializeToString())
    untouched(*paths)
    return paths


def test_same_model_passes_and_writes_the_report(pair, run_cli, tmp_path):
    a, _ = pair
    report = tmp_path / "r.json"
    result = run_cli("verify", a, a, "--samples", "3", "--report", report)
    assert result.code == 0, result.err
    assert "output" in result.out and "max_abs" in result.out
    data = json.loads(report.read_text())
    assert data["pass_name"] == "verify" and data["summary"]["ok"] is True and data["summary"]["samples"] == 3
    assert data["candidates"][0]["details"]["max_abs"] == 0.0


def test_beyond_tolerance_is_exit_1_with_one_line(pair, run_cli, tmp_path):
    a, b = pair
    report = tmp_path / "r.json"
    result = run_cli("verify", a, b, "--report", report)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsq: error: outputs differ beyond tolerance")
    assert "mismatch" in result.out  # the table is still shown
    data = json.loads(report.read_text())
    assert data["summary"]["ok"] is False
    assert data["candidates"][0]["details"]["max_abs"] == pytest.approx(1e-3, rel=1e-3)


def test_tolerances_are_options(pair, run_cli):
    a, b = pair
    assert run_cli("verify", a, b, "--atol", "2e-3").code == 0
    assert run_cli("verify", a, b, "--atol", "5e-4", "--rtol", "0").code == 1


def test_data_from_npz_file_and_directory(pair, run_cli, tmp_path, caplog):
    a, b = pair
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        np.savez(data / f"{i}.npz", input=np.full((2, 3, 8, 8), i, np.float32))
    report = tmp_path / "r.json"
    result = run_cli("verify", a, a, "--data", data, "--report", report)
    assert result.code == 0, result.err
    assert json.loads(report.read_text())["summary"]["samples"] == 3
    result = run_cli("verify", a, a, "--data", data / "1.npz", "--samples", "5")
    assert result.code == 0
    assert "--samples is ignored" in result.err
    assert run_cli("verify", a, b, "--data", data / "0.npz").code == 1


@pytest.mark.parametrize("problem", ["missing_model", "garbage_model", "bad_data", "wrong_shape_data"])
def test_bad_input_is_one_line_exit_1(problem, pair, run_cli, tmp_path):
    a, b = pair
    args = ["verify", a, b]
    if problem == "missing_model":
        args[2] = tmp_path / "nope.onnx"
    elif problem == "garbage_model":
        (tmp_path / "junk.onnx").write_bytes(b"junk" * 10)
        args[2] = tmp_path / "junk.onnx"
    elif problem == "bad_data":
        (tmp_path / "x.npz").write_bytes(b"not npz")
        args += ["--data", tmp_path / "x.npz"]
    else:
        np.savez(tmp_path / "x.npz", input=np.zeros((1, 4, 8, 8), np.float32))
        args += ["--data", tmp_path / "x.npz"]
    result = run_cli(*args)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsq: error:"), result.err


def test_quiet_prints_nothing(pair, run_cli):
    a, _ = pair
    result = run_cli("-q", "verify", a, a)
    assert result.code == 0 and result.out == "" and result.err == ""


def test_sample_models_at_two_opsets_agree(sample_model, run_cli):
    result = run_cli("verify", sample_model("jacintonet_seg"), sample_model("jacintonet_seg_op17"), "--samples", "1")
    assert result.code == 0, result.err


def test_real_command(pair):
    a, b = pair  # the passing case runs in-process above; one subprocess keeps this test quick
    bad = subprocess.run([str(BIN), "verify", str(a), str(b)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# --- dynamic-shape models: random inputs of a size they take, --input-shape -------------------------

def _save(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_dynamic_models_run_at_image_and_shared_sizes(run_cli, tmp_path):
    for name, model in (("s", strided_model(spatial_after(224))), ("r", strided_model(spatial_after(320))),
                        ("shared", shared_symbol_model())):
        path = _save(tmp_path / f"{name}.onnx", model)
        result = run_cli("verify", path, path)
        assert result.code == 0, (name, result.err)


def test_no_random_shape_runs_then_input_shape(run_cli, tmp_path):
    path = _save(tmp_path / "m.onnx", strided_model(spatial_after(143)))
    result = run_cli("verify", path, path)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsq: error: the check could not run"), result.err
    assert "--input-shape x:1x3xHxW" in lines[0] and "--data" in lines[0] and "--no-verify" not in lines[0]
    assert "differ" not in lines[0] and "mismatch" not in lines[0]
    report = tmp_path / "r.json"
    result = run_cli("verify", path, path, "--input-shape", "x:2x3x143x143", "--report", report)
    assert result.code == 0, result.err
    assert json.loads(report.read_text())["summary"]["ok"] is True


@pytest.mark.parametrize("value, needle", [("x:1x3x143", "rank 4"), ("nope:1x3x143x143", "its inputs: x"),
                                           ("x:1x3x1e3x143", "'1e3' is not a dim")])
def test_bad_input_shape_is_one_line(value, needle, run_cli, tmp_path):
    path = _save(tmp_path / "m.onnx", strided_model(spatial_after(143)))
    result = run_cli("verify", path, path, "--input-shape", value)
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1 and needle in lines[0], result.err


def test_input_shape_with_data_is_ignored_with_a_warning(pair, run_cli, tmp_path):
    a, _ = pair
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 3, 8, 8), np.float32))
    result = run_cli("verify", a, a, "--data", tmp_path / "x.npz", "--input-shape", "input:1x3x9x9")
    assert result.code == 0 and "--input-shape is ignored: --data gives the inputs" in result.err


def test_real_command_that_cannot_check_is_one_line(tmp_path):
    path = _save(tmp_path / "m.onnx", strided_model(spatial_after(143)))
    proc = subprocess.run([str(BIN), "verify", str(path), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # onnxruntime's own error log stays quiet
