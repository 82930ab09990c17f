"""onnxsq optimize: the real command, its report, its self-check, and bad input (one line, exit 1,
input untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from test_shapes import spatial_after, strided_model  # pythonpath = tests

pytest.importorskip("onnxruntime")

from onnxsq.passes.fold_batchnorm import bn_math


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


def one_line_error(res, *needles: str) -> None:
    assert res.code == 1, (res.code, res.out, res.err)
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxsq: error:"), res.err
    assert "Traceback" not in res.err + res.out
    for n in needles:
        assert n in lines[0], lines[0]


def test_optimize_folds_writes_report_and_keeps_ir(tiny_models, run_cli, untouched, tmp_path):
    src = tiny_models["conv_op11"]
    untouched(src)
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    res = run_cli("optimize", src, "-o", out, "--report", rep)
    assert res.code == 0, res.err
    assert "fold-batchnorm" in res.out and "folded" in res.out and "verify_max_abs" in res.out
    assert bn_count(src) == 1 and bn_count(out) == 0
    folded, original = onnx.load(str(out)), onnx.load(str(src))
    assert folded.ir_version == original.ir_version and folded.opset_import == original.opset_import
    report = json.loads(rep.read_text())
    assert report["pass_name"] == "fold-batchnorm" and report["summary"]["verified"] is True
    assert report["summary"]["verify_max_abs"] < 1e-5
    assert [c["action"] for c in report["candidates"]] == ["folded"]


def test_default_output_name_and_no_verify(tiny_models, run_cli):
    src = tiny_models["conv"]
    res = run_cli("-q", "optimize", src, "--no-verify")
    assert res.code == 0 and res.out == "", res.out + res.err
    assert bn_count(src.with_name("conv.opt.onnx")) == 0


def test_tolerance_flags_with_no_verify_warn(tiny_models, run_cli, tmp_path):
    res = run_cli("optimize", tiny_models["conv"], "-o", tmp_path / "o.onnx", "--no-verify", "--rtol", "1e-3")
    assert res.code == 0 and "--rtol is ignored" in res.err


def test_in_place_needs_the_flag(tiny_models, run_cli, untouched):
    src = tiny_models["conv"]
    untouched(src)
    one_line_error(run_cli("optimize", src, "-o", src), "--in-place")


def test_in_place_replaces_the_input(tiny_models, run_cli):
    src = tiny_models["conv"]
    assert run_cli("optimize", src, "--in-place").code == 0
    assert bn_count(src) == 0


def test_keep_standalone_leaves_the_unfoldable_bn(tmp_path, run_cli):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.full(2, v, np.float32), n) for n, v in
             (("g", 2.0), ("b", 0.5), ("m", 0.1), ("v", 1.0))]
    graph = helper.make_graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])], inits)
    src = tmp_path / "lone.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), str(src))
    res = run_cli("optimize", src, "-o", tmp_path / "k.onnx", "--keep-standalone")
    assert res.code == 0 and "skipped" in res.out and bn_count(tmp_path / "k.onnx") == 1
    res = run_cli("optimize", src, "-o", tmp_path / "a.onnx")
    assert res.code == 0 and "replaced" in res.out and bn_count(tmp_path / "a.onnx") == 0


def test_verification_failure_is_an_error_and_writes_nothing(tiny_models, run_cli, monkeypatch, tmp_path):
    real = bn_math.fold_bias
    monkeypatch.setattr(bn_math, "fold_bias", lambda bias, scale, shift: real(bias, scale, shift) + 0.5)
    out = tmp_path / "bad.onnx"
    one_line_error(run_cli("optimize", tiny_models["conv"], "-o", out), "differs from the original", "--no-verify")
    assert not out.exists()


@pytest.mark.parametrize("kind, needle", [
    ("missing", "no such file"),
    ("not-onnx", "not a valid ONNX model"),
    ("truncated", "not a valid ONNX model"),
    ("checker", "onnx.checker"),
])
def test_bad_input(kind, needle, tiny_models, run_cli, untouched, tmp_path):
    src = tmp_path / f"{kind}.onnx"
    good = tiny_models["conv"].read_bytes()
    if kind == "not-onnx":
        src.write_text("this is a text file, not a model\n" * 10)
    elif kind == "truncated":
        src.write_bytes(good[: len(good) // 2])
    elif kind == "checker":
        model = onnx.load_from_string(good)
        model.graph.node[0].input[1] = "no_such_weight"
        src.write_bytes(model.SerializeToString())
    if src.exists():
        untouched(src)
    out = tmp_path / "out.onnx"
    one_line_error(run_cli("optimize", src, "-o", out), needle)
    assert not out.exists()


def test_real_subprocess(tiny_models, tmp_path):
    """The installed console script, end to end, with the input's bytes compared before and after."""
    exe = Path(sys.executable).with_name("onnxsq")
    if not exe.exists():
        pytest.skip(f"{exe} is not installed in this environment")
    src = tiny_models["conv"]
    before = src.read_bytes()
    out = tmp_path / "o.onnx"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([str(exe), "optimize", str(src), "-o", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "folded" in proc.stdout and bn_count(out) == 0 and src.read_bytes() == before
    proc = subprocess.run([str(exe), "optimize", str(tmp_path / "nope.onnx")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


# --- the self-check on dynamic-shape models (--input-shape) -----------------------------------------

def _write(tmp_path: Path, fixed: int, name: str = "dyn", **kw) -> Path:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(strided_model(fixed, **kw).SerializeToString())
    return path


@pytest.mark.parametrize("size", [224, 320])  # the first fill, and the one retry
def test_dynamic_model_is_checked_at_a_size_it_takes(size, run_cli, tmp_path, untouched):
    src = _write(tmp_path, spatial_after(size))
    untouched(src)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = run_cli("optimize", src, "-o", out, "--report", rep)
    assert res.code == 0, res.err
    summary = json.loads(rep.read_text())["summary"]
    assert summary["verified"] is True and summary["folded"] == 1 and bn_count(out) == 0


def test_no_random_shape_runs_is_one_line_naming_input_shape(run_cli, tmp_path):
    src = _write(tmp_path, spatial_after(143))
    out = tmp_path / "o.onnx"
    res = run_cli("optimize", src, "-o", out)
    one_line_error(res, "could not run on random inputs of shape x:1x3x224x224 or x:1x3x320x320",
                   "--input-shape x:1x3xHxW", "--no-verify")
    assert "differ" not in res.err and "mismatch" not in res.err and not out.exists()
    res = run_cli("optimize", src, "-o", out, "--input-shape", "x:1x3x143x143", "--report", tmp_path / "r.json")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["verified"] is True
    assert run_cli("optimize", src, "-o", out, "--input-shape", "1x3x143x143", "--in-place").code == 0
    # a given shape that does not run is the user's data problem: named, no retry
    one_line_error(run_cli("optimize", src, "-o", out, "--input-shape", "x:1x3x224x224"),
                   "given shape x:1x3x224x224")


def test_nhwc_model_is_checked(run_cli, tmp_path):
    res = run_cli("optimize", _write(tmp_path, spatial_after(224), nhwc=True), "-o", tmp_path / "o.onnx")
    assert res.code == 0, res.err


@pytest.mark.parametrize("value, needle", [
    ("x:1x3xHx224", "'H' is not a dim"),
    ("x:", "no dims"),
    ("x:0x3x224x224", "positive"),
    ("y:1x3x224x224", "no input 'y' (its inputs: x)"),
    ("x:1x3x224", "rank 4"),
    ("x:1x4x224x224", "dim 1 is 4"),
])
def test_bad_input_shape_is_one_line(value, needle, run_cli, tmp_path, untouched):
    src = _write(tmp_path, 27)
    untouched(src)
    one_line_error(run_cli("optimize", src, "-o", tmp_path / "o.onnx", "--input-shape", value), needle)
    assert not (tmp_path / "o.onnx").exists()


def test_input_shape_twice_and_with_no_verify(run_cli, tmp_path):
    src = _write(tmp_path, 27)
    one_line_error(run_cli("optimize", src, "-o", tmp_path / "o.onnx", "--input-shape", "x:1x3x224x224",
                           "--input-shape", "x:1x3x320x320"), "given twice")
    res = run_cli("optimize", src, "-o", tmp_path / "o.onnx", "--no-verify", "--input-shape", "x:1x3x224x224")
    assert res.code == 0 and "--input-shape is ignored" in res.err
