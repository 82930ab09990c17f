"""``onnxsq quantize``: end to end through the CLI, bad input as one-line errors, input never modified."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from test_shapes import spatial_after, strided_model  # pythonpath = tests

from onnxsq.calibration import pow2

REPO = Path(__file__).resolve().parents[2]


def _scales(path: Path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    return [inits[n.input[1]] for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_quantize_npy_folder_with_report_and_params(run_cli, model_and_data, tmp_path, untouched):
    model, data = model_and_data
    untouched(model)
    out, report, params = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "p.json"
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report", report, "--params-out", params,
                  "--per-channel", "--method", "minmax")
    assert res.code == 0, res.err
    scales = _scales(out)
    assert scales and all(pow2.is_power_of_two(s) for s in scales)
    rep = json.loads(report.read_text())
    assert rep["pass_name"] == "quantize" and rep["summary"]["calibration_samples"] == 6
    assert rep["summary"]["batchnorm_folded_first"] == 1
    assert "sqnr_db" in next(c for c in rep["candidates"] if c["op"] == "Conv")["details"]
    assert "conv" in res.out and "output_sqnr_db" in res.out
    # the parameters file replaces calibration
    out2 = tmp_path / "q2.onnx"
    res = run_cli("quantize", model, "--params", params, "-o", out2)
    assert res.code == 0, res.err
    assert out2.read_bytes() == out.read_bytes()


def test_images_with_calib_count_and_skipped_file(run_cli, conv_model, tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(conv_model().SerializeToString())
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(imgs / f"{i}.jpg")
    (imgs / "zz_broken.png").write_bytes(b"nope")
    res = run_cli("quantize", model, "--calib", imgs, "--calib-count", "3", "--mean", "127", "127", "127",
                  "--std", "64", "64", "64", "-o", tmp_path / "q.onnx", "--report", tmp_path / "r.json")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["calibration_samples"] == 3
    res = run_cli("quantize", model, "--calib", imgs, "-o", tmp_path / "q2.onnx")
    assert res.code == 0 and "zz_broken.png" in "".join(res.err.split())


@pytest.mark.parametrize("args, match", [
    (["--calib", "{tmp}/nowhere"], "nowhere: no such file"),
    (["--calib", "{bad}"], "bad.npy"),
    (["--bits", "12", "--calib", "{data}"], "opset 21"),
    (["--bits", "1", "--calib", "{data}"], "--bits must be in 2..16"),
    ([], "quantize needs --calib DATA"),
    (["--calib", "{data}", "--params", "{tmp}/missing.json"], "no such parameters file"),
])
def test_bad_input_one_line_exit_1(run_cli, model_and_data, tmp_path, args, match, untouched):
    model, data = model_and_data
    untouched(model)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "bad.npy", np.zeros((1, 2, 8, 8), np.float32))
    argv = [a.format(tmp=tmp_path, bad=bad, data=data) for a in args]
    res = run_cli("quantize", model, *argv, "-o", tmp_path / "q.onnx")
    assert res.code == 1, (res.out, res.err)
    assert match in " ".join(res.err.split())
    assert "Traceback" not in res.err
    assert not (tmp_path / "q.onnx").exists()


def test_refuses_to_overwrite_input(run_cli, model_and_data, untouched):
    model, data = model_and_data
    untouched(model)
    res = run_cli("quantize", model, "--calib", data, "-o", model)
    assert res.code == 1 and "--in-place" in res.err


def test_real_subprocess(model_and_data, tmp_path):
    model, data = model_and_data
    exe = Path(sys.executable).with_name("onnxsq")
    out = tmp_path / "q.onnx"
    proc = subprocess.run([str(exe), "-q", "quantize", str(model), "--calib", str(data), "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and proc.stdout.strip() == ""
    proc = subprocess.run([str(exe), "quantize", str(model), "--calib", str(tmp_path / "none"), "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_batch_size_flag(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report", report, "--batch-size", "4")
    assert res.code == 0, res.err
    assert json.loads(report.read_text())["summary"]["calibration_samples"] == 6  # batches of 4 and 2
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--batch-size", "0")
    assert res.code == 1 and "batch size must be at least 1" in res.err


def test_report_samples_and_bias_correction_flags(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report", report, "--report-samples", "2")
    assert res.code == 0, res.err
    summary = json.loads(report.read_text())["summary"]
    assert summary["report_samples"] == 2 and summary["bias_corrected"] == 1
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report", report, "--report-samples", "0",
                  "--no-bias-correction")
    assert res.code == 0, res.err
    summary = json.loads(report.read_text())["summary"]
    assert "report_samples" not in summary and "bias_corrected" not in summary
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report-samples", "-1")
    assert res.code == 1 and "report samples must be 0 or more" in res.err


def test_weight_bits_flag(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report", report, "--weight-bits", "4")
    assert res.code == 0, res.err
    summary = json.loads(report.read_text())["summary"]
    assert summary["bits"] == 8 and summary["weight_bits"] == 4
    m = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    weights = [inits[n.input[0]] for n in m.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert weights and all(-8 <= int(w.min()) and int(w.max()) <= 7 for w in weights)  # 4-bit range in int8
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--weight-bits", "1")
    assert res.code == 1 and "\n" not in res.err.strip()


# --- calibration images for models with a dynamic H W: --input-shape, else 224 ----------------------

@pytest.fixture
def images(tmp_path) -> Path:
    """Four images of different sizes (they only batch once resized to one size)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 30), (41, 25), (64, 64), (33, 17)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _dyn(tmp_path: Path, fixed: int) -> Path:
    path = tmp_path / f"dyn{fixed}.onnx"
    path.write_bytes(strided_model(fixed).SerializeToString())
    return path


def test_dynamic_size_defaults_to_224_with_an_info_line(run_cli, tmp_path, images):
    res = run_cli("-v", "quantize", _dyn(tmp_path, spatial_after(224)), "--calib", images, "-o", tmp_path / "q.onnx",
                  "--report", tmp_path / "r.json")
    assert res.code == 0, res.err
    assert "dynamic size" in res.err and "224x224" in res.err
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["calibration_samples"] == 4


def test_input_shape_sets_the_calibration_image_size(run_cli, tmp_path, images, untouched):
    model = _dyn(tmp_path, spatial_after(143))  # runs at 143x143 only
    untouched(model)
    out = tmp_path / "q.onnx"
    res = run_cli("quantize", model, "--calib", images, "-o", out)
    assert res.code == 1 and len(res.err.strip().splitlines()) == 1 and not out.exists(), res.err
    res = run_cli("quantize", model, "--calib", images, "-o", out, "--input-shape", "x:1x3x143x143")
    assert res.code == 0, res.err
    assert "ignored" not in res.err and out.exists()
    res = run_cli("quantize", model, "--calib", images, "-o", out, "--size", "143", "143", "--input-shape", "1x3x9x9")
    assert res.code == 0 and "--input-shape is ignored: --size sets" in res.err


def test_input_shape_with_tensors_or_bad_values(run_cli, model_and_data, tmp_path, images):
    model, data = model_and_data
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", "--input-shape", "input:1x3x8x8")
    assert res.code == 0 and "--input-shape is ignored" in res.err
    for value, needle in (("input:1x3x9x9", "dim 2 is 9"), ("other:1x3x8x8", "its inputs: input"),
                          ("input:1x3x8", "rank 4"), ("input:1x3x8x8x", "no dims")):
        res = run_cli("quantize", model, "--calib", images, "-o", tmp_path / "q.onnx", "--input-shape", value)
        lines = res.err.strip().splitlines()
        assert res.code == 1 and len(lines) == 1 and needle in lines[0], (value, res.err)


def test_per_tensor_and_no_equalize_flags(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    default, per_tensor = tmp_path / "d.onnx", tmp_path / "t.onnx"
    assert run_cli("quantize", model, "--calib", data, "-o", default, "-q").code == 0
    res = run_cli("quantize", model, "--calib", data, "-o", per_tensor, "--per-tensor", "--no-equalize",
                  "--report", tmp_path / "r.json", "-q")
    assert res.code == 0, res.err
    weight_dq = [n for n in onnx.load(str(default)).graph.node if n.op_type == "DequantizeLinear"
                 and any(a.name == "axis" for a in n.attribute)]
    assert weight_dq, "per-channel weights by default"
    assert not [n for n in onnx.load(str(per_tensor)).graph.node if n.op_type == "DequantizeLinear"
                and any(a.name == "axis" for a in n.attribute)]
    assert "equalized_pairs" not in json.loads((tmp_path / "r.json").read_text())["summary"]


def test_no_fold_forward_flag(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    for flags, want in (((), True), (("--no-fold-forward",), False)):
        res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", *flags, "--report",
                      tmp_path / "r.json", "-q")
        assert res.code == 0, res.err
        assert ("forward_folded" in json.loads((tmp_path / "r.json").read_text())["summary"]) is want


def test_sensitivity_and_target_sqnr_flags(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    rep = tmp_path / "r.json"
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "s.onnx", "--sensitivity", "--report", rep)
    assert res.code == 0, res.err
    assert "sensitivity_db" in res.out
    summary = json.loads(rep.read_text())["summary"]
    target = summary["output_sqnr_db"] + 3
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "t.onnx", "--weight-bits", "4",
                  "--target-sqnr", str(target), "--report", rep, "-q")
    assert res.code == 0, res.err
    summary = json.loads(rep.read_text())["summary"]
    assert summary["target_sqnr"] == target and summary["kept_float_for_target"]
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "u.onnx", "--target-sqnr", "30",
                  "--report-samples", "0")
    assert res.code == 1 and "--report-samples" in res.err and len(res.err.strip().splitlines()) == 1


def test_pooled_headroom_flag(run_cli, model_and_data, tmp_path):
    from builders import se_head_classifier

    _, data = model_and_data  # six 3×8×8 samples: se_head_classifier's input
    model = tmp_path / "se.onnx"
    model.write_bytes(se_head_classifier().SerializeToString())
    for flags, want in (((), {"bits": 1, "tensors": 2}), (("--pooled-headroom", "2"), {"bits": 2, "tensors": 2}),
                        (("--pooled-headroom", "0"), None), (("--effort", "fast"), None)):
        res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", *flags, "--report",
                      tmp_path / "r.json", "-q")
        assert res.code == 0, res.err
        assert json.loads((tmp_path / "r.json").read_text())["summary"].get("pooled_headroom") == want, flags
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", "--pooled-headroom", "8")
    assert res.code != 0 and "--pooled-headroom must be in 0..7" in res.err and "Traceback" not in res.err


def test_fuse_activations_flag(run_cli, model_and_data, tmp_path):
    from builders import activation_chain

    _, data = model_and_data  # six 3×8×8 samples: activation_chain's input
    model = tmp_path / "silu.onnx"
    model.write_bytes(activation_chain("silu").SerializeToString())
    fused = {}
    for mode in ("none", "all"):
        res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / f"{mode}.onnx", "--fuse-activations", mode,
                      "--report", tmp_path / "r.json", "-q")
        assert res.code == 0, res.err
        rep = json.loads((tmp_path / "r.json").read_text())
        fused[mode] = sum(c["action"] == "fused" for c in rep["candidates"])
    assert fused == {"none": 0, "all": 6}
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", "--fuse-activations", "silu")
    assert res.code != 0 and "--fuse-activations" in res.err and "Traceback" not in res.err


def test_no_offset_outputs_flag(run_cli, model_and_data, tmp_path):
    from builders import activation_chain

    _, data = model_and_data
    model = tmp_path / "silu.onnx"
    model.write_bytes(activation_chain("silu").SerializeToString())  # two SiLUs read by padded Convs, one not
    lifted = {}
    for flags in ((), ("--no-offset-outputs",)):
        res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", *flags, "--report",
                      tmp_path / "r.json", "-q")
        assert res.code == 0, res.err
        lifted[flags] = json.loads((tmp_path / "r.json").read_text())["summary"].get("offset_outputs")
    assert lifted == {(): 2, ("--no-offset-outputs",): None}
