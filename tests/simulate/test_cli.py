"""onnxsq simulate / export-int from the command line: outputs, report, the package round trip, and
one-line errors with exit status 1."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from simulate_helpers import SAMPLES, random_feeds

from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.package import read_package
from onnxsq.simulate.program import load_program


@pytest.fixture(scope="module")
def data(tmp_path_factory, quantized):
    root = tmp_path_factory.mktemp("simulate-cli")
    path = quantized("small_cls_torch")
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    feeds = random_feeds(model, SAMPLES["small_cls_torch"], 3, seed=9)
    npz = root / "feeds.npz"
    np.savez(npz, **{name: np.concatenate([f[name] for f in feeds])})
    return root, path, npz


def test_simulate_writes_outputs_and_report(run_cli, data):
    root, path, npz = data
    out, rep = root / "out.npz", root / "r.json"
    res = run_cli("simulate", path, "--data", npz, "--outputs", out, "--report", rep, "-q")
    assert res.code == 0, res.err
    report = json.loads(rep.read_text())
    s = report["summary"]
    assert s["samples"] == 3 and s["float_islands"] == 0
    assert s["ort_equal_fraction:logits"] == 1.0 and s["ort_worst_step:logits"] == 0
    layers = [c for c in report["candidates"] if c["action"] == "integer"]
    assert layers and all(c["details"]["max_step"] == 0 for c in layers)
    assert all(c["details"]["overflow"] == "" for c in layers if "overflow" in c["details"])
    outputs = np.load(out)
    assert outputs["logits"].shape == (3, 10)


def test_rounding_and_acc_bits_are_reported(run_cli, data):
    root, path, npz = data
    rep = root / "floor.json"
    res = run_cli("simulate", path, "--data", npz, "--rounding", "floor", "--acc-bits", "16", "--report", rep, "-q",
                  "--no-compare")
    assert res.code == 0, res.err
    s = json.loads(rep.read_text())["summary"]
    assert s["rounding"] == "floor" and s["vs_half_even_layers"] > 0 and s["vs_half_even_elements"] > 0
    assert s["acc_overflow_worst_case"], "16-bit accumulators cannot hold an int8 conv's worst case"


def test_export_int_round_trip_is_exact(run_cli, data):
    root, path, npz = data
    pkg = root / "pkg"
    res = run_cli("export-int", path, "-o", pkg, "-q")
    assert res.code == 0, res.err
    doc = json.loads((pkg / "model.json").read_text())
    assert doc["format"] == "onnxsq-int" and doc["version"] == 1 and doc["layers"]
    conv = next(lay for lay in doc["layers"] if lay["op"] == "Conv")
    assert conv["out"]["bits"] == 8 and conv["requant_shift"] is not None
    weights = np.load(pkg / "weights.npz")
    dtypes = {str(weights[c["array"]].dtype) for c in doc["constants"].values() if c["shift"] is not None}
    assert dtypes <= {"int8", "int32"}
    a, b = root / "a.npz", root / "b.npz"
    assert run_cli("simulate", path, "--data", npz, "--outputs", a, "-q", "--no-compare").code == 0
    assert run_cli("simulate", pkg, "--data", npz, "--outputs", b, "-q").code == 0
    assert np.array_equal(np.load(a)["logits"], np.load(b)["logits"])
    # and the package's program computes every integer tensor exactly as the model's
    model = onnx.load(str(path))
    feed = random_feeds(model, SAMPLES["small_cls_torch"], 1, seed=3, batch=2)[0]
    mine, theirs = Simulator(load_program(model)).run(feed), Simulator(read_package(pkg)).run(feed)
    assert mine.ints.keys() == theirs.ints.keys()
    assert all(np.array_equal(mine.ints[k], theirs.ints[k]) for k in mine.ints)


@pytest.mark.parametrize("args,needle", [
    (["simulate", "{missing}", "--data", "{npz}"], "no such file"),
    (["simulate", "{float}", "--data", "{npz}"], "not a power of two"),
    (["simulate", "{model}", "--data", "{missing}"], "no such file"),
    (["simulate", "{model}", "--data", "{bad_npz}"], ""),
    (["export-int", "{float}", "-o", "{pkg}"], "not a power of two"),
    (["simulate", "{bad_pkg}", "--data", "{npz}"], "package"),
    (["simulate", "{float_model}", "--data", "{npz}"], "not a quantized model"),
    (["simulate", "{model}", "--data", "{npz}", "--float", "{missing}"], "no such file"),
])
def test_errors_are_one_line_exit_1(run_cli, data, tmp_path, sample_model, args, needle):
    root, path, npz = data
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, nothing=np.zeros((1, 2), np.float32))
    bad_pkg = tmp_path / "badpkg"
    bad_pkg.mkdir()
    (bad_pkg / "model.json").write_text('{"format": "something-else"}')
    fill = {"missing": tmp_path / "missing.onnx", "npz": npz, "model": path, "bad_npz": bad_npz,
            "pkg": tmp_path / "p", "bad_pkg": bad_pkg, "float": _float_qdq(tmp_path),
            "float_model": sample_model("small_cls_torch")}
    res = run_cli(*[a.format(**fill) for a in args])
    assert res.code == 1, (res.code, res.err)
    lines = [line for line in res.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0], res.err
    assert needle in res.err


def _float_qdq(tmp_path):
    """A QDQ model whose scale is not a power of two (what onnxruntime's quantizer writes)."""
    from onnx import TensorProto, helper, numpy_helper

    path = tmp_path / "ort_style.onnx"
    if not path.exists():
        inits = [numpy_helper.from_array(np.asarray(0.3, np.float32), "s"),
                 numpy_helper.from_array(np.asarray(0, np.int8), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 7
        onnx.save(m, str(path))
    return path


def test_simulate_reads_an_image_folder_with_preprocessing(run_cli, data, tmp_path):
    from PIL import Image

    root, path, _ = data
    rng = np.random.default_rng(4)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out, rep = tmp_path / "o.npz", tmp_path / "r.json"
    res = run_cli("simulate", path, "--data", folder, "--size", "32", "32", "--mean", "127", "127", "127",
                  "--std", "64", "64", "64", "--outputs", out, "--report", rep, "-q")
    assert res.code == 0, res.err
    assert np.load(out)["logits"].shape == (3, 10)
    assert json.loads(rep.read_text())["summary"]["ort_equal_fraction:logits"] == 1.0
    res = run_cli("simulate", path, "--data", folder, "--input-shape", "1x3x32x32", "--outputs", out, "-q",
                  "--no-compare")
    assert res.code == 0, res.err


def test_simulate_takes_the_preprocessing_the_model_stores(run_cli, tmp_path):
    """quantize on images stores its --mean/--std in the model; simulate on an image folder uses them
    (as eval does) unless given, and warns about a given one that differs."""
    from pathlib import Path

    from PIL import Image

    repo = Path(__file__).resolve().parents[2]
    rng = np.random.default_rng(5)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    qpath, pre = tmp_path / "m.q.onnx", ["--mean", "120", "110", "100", "--std", "60", "50", "70"]
    res = run_cli("quantize", repo / "sample_models" / "small_cls_torch.onnx", "--calib", folder, *pre,
                  "--report-samples", "0", "-o", qpath, "-q")
    assert res.code == 0, res.err
    stored, given, other = (tmp_path / f"{n}.npz" for n in ("stored", "given", "other"))
    rep = tmp_path / "r.json"
    res = run_cli("simulate", qpath, "--data", folder, "--outputs", stored, "--report", rep, "-q", "--no-compare")
    assert res.code == 0, res.err
    assert "mean=120/110/100" in json.loads(rep.read_text())["summary"]["preprocessing"]
    assert run_cli("simulate", qpath, "--data", folder, *pre, "--outputs", given, "-q", "--no-compare").code == 0
    np.testing.assert_array_equal(np.load(stored)["logits"], np.load(given)["logits"])
    res = run_cli("simulate", qpath, "--data", folder, "--mean", "0", "0", "0", "--outputs", other, "--no-compare")
    assert res.code == 0 and "overrides the model's stored preprocessing" in res.err
    assert not np.array_equal(np.load(stored)["logits"], np.load(other)["logits"])


def test_export_int_of_a_model_with_look_up_tables(run_cli, tmp_path):
    """--integer-only turns a Sigmoid into a look-up table layer: export-int writes and reports it (it used to
    fail on the report's kind name after writing the package) and the package runs as the model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c0"], ["s0"]), helper.make_node("Conv", ["s0", "w1"], ["y"])]
    g = helper.make_graph(nodes, "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    src, q, pkg, rep = tmp_path / "m.onnx", tmp_path / "m.q.onnx", tmp_path / "pkg", tmp_path / "r.json"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), str(src))
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32))
    assert run_cli("quantize", src, "--calib", npz, "--integer-only", "--report-samples", "0", "-o", q, "-q").code == 0
    res = run_cli("export-int", q, "-o", pkg, "--report", rep, "-q")
    assert res.code == 0, res.err
    actions = {c["action"] for c in json.loads(rep.read_text())["candidates"]}
    assert "look-up table" in actions, actions
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run_cli("simulate", q, "--data", npz, "--outputs", a, "-q", "--no-compare").code == 0
    assert run_cli("simulate", pkg, "--data", npz, "--outputs", b, "-q").code == 0
    assert np.array_equal(np.load(a)["y"], np.load(b)["y"])
