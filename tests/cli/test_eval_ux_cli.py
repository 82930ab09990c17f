"""``onnxsq eval`` as a new user meets it: the preprocessing stored in the model by quantize, label
errors that name the label list, per-class IoU at table precision."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

pytest.importorskip("onnxruntime")


def _channel_mean_classifier(path, hw: int = 4):
    """logits = the per-channel mean of the input: class k is the brightest channel after preprocessing."""
    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"], name="gap"),
                           helper.make_node("Flatten", ["p"], ["y"], name="flat")], "cm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(path))
    return path


def _folder(root, hw: int = 4):
    """Class k: channel k at 200, the others at 100 (rgb), 2 images each."""
    for k in range(3):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(2):
            px = np.full((hw, hw, 3), 100, np.uint8)
            px[:, :, k] = 200
            Image.fromarray(px).save(root / f"c{k}" / f"{i}.png")
    return root


def _top1(res_out: str) -> str:
    return next(line for line in res_out.splitlines() if "top1" in line)


def test_eval_uses_the_preprocessing_quantize_stored_and_warns_when_options_differ(run_cli, tmp_path):
    from onnxsq.data.stored import KEY

    model = _channel_mean_classifier(tmp_path / "m.onnx")
    data = _folder(tmp_path / "imgs")
    # quantize on images stores its preprocessing: bgr order makes class 0 look like class 2
    res = run_cli("quantize", model, "--calib", data / "c0", "--channel-order", "bgr", "--mean", "1", "2", "3",
                  "-o", tmp_path / "q.onnx", "-q")
    assert res.code == 0, res.err
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}
    stored = json.loads(meta[KEY])
    assert stored["channel_order"] == "bgr" and stored["mean"] == [1.0, 2.0, 3.0] and "quantize" in stored["by"]

    # eval without options: the stored bgr order (top1 = 1/3: only c1, the middle channel, stays put)
    rep = tmp_path / "r.json"
    res = run_cli("eval", tmp_path / "q.onnx", "--data", data, "--report", rep)
    assert res.code == 0, res.err
    summary = json.loads(rep.read_text())["summary"]
    assert summary["top1"] == pytest.approx(1 / 3)
    assert "channel_order=bgr" in summary["preprocessing"] and "stored in the model by onnxsq quantize" in res.out
    assert "overrides" not in res.err
    # a given option that differs: used, and said
    res = run_cli("eval", tmp_path / "q.onnx", "--data", data, "--channel-order", "rgb", "--report", rep)
    assert res.code == 0, res.err
    assert json.loads(rep.read_text())["summary"]["top1"] == 1.0
    err = " ".join(res.err.split())
    assert "--channel-order rgb overrides the model's stored preprocessing (--channel-order bgr" in err
    # a float model without metadata: the options' defaults, nothing said
    res = run_cli("eval", model, "--data", data, "--report", rep)
    assert res.code == 0 and json.loads(rep.read_text())["summary"]["top1"] == 1.0
    assert "preprocessing" not in json.loads(rep.read_text())["summary"] and not res.err.strip()


def test_quantize_on_arrays_stores_no_preprocessing(run_cli, tmp_path):
    from onnxsq.data.stored import KEY

    model = _channel_mean_classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).random((4, 3, 4, 4), dtype=np.float32))
    res = run_cli("quantize", model, "--calib", tmp_path / "c.npz", "-o", tmp_path / "q.onnx", "-q")
    assert res.code == 0, res.err
    assert KEY not in {p.key for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}


def _seg_model(path, classes: int = 3, hw: int = 4):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "seg",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", classes, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes, hw, hw])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(path))
    return path


def _seg_list(tmp, label_value: int | None = None):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(3):
        px = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        lab = np.argmax(px, axis=2).astype(np.uint8)
        lab[0, :2] = (lab[0, :2] + 1) % 3  # a few wrong pixels: IoUs that are not round numbers
        if label_value is not None and i == 1:
            lab[1, 1] = label_value
        Image.fromarray(px).save(tmp / f"i{i}.png")
        Image.fromarray(lab, mode="L").save(tmp / f"l{i}.png")
        images.append(str(tmp / f"i{i}.png"))
        labels.append(str(tmp / f"l{i}.png"))
    (tmp / "images.txt").write_text("\n".join(images) + "\n")
    (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
    return tmp / "images.txt", tmp / "labels.txt"


def test_per_class_iou_is_shown_at_table_precision(run_cli, tmp_path):
    model = _seg_model(tmp_path / "s.onnx")
    images, labels = _seg_list(tmp_path)
    rep = tmp_path / "r.json"
    res = run_cli("eval", model, "--data", images, "--labels", labels, "--report", rep)
    assert res.code == 0, res.err
    ious = json.loads(rep.read_text())["summary"]["per_class_iou"]
    assert any(len(repr(v)) > 8 for v in ious)  # long floats in the JSON (full precision there)
    row = next(line for line in res.out.splitlines() if "per_class_iou" in line)
    shown = row.split("│")[2].strip()
    assert shown.startswith("[") and all(len(v.strip()) <= 6 for v in shown.strip("[]").split(",")), shown


def test_a_label_out_of_range_names_the_label_list(run_cli, tmp_path):
    model = _seg_model(tmp_path / "s.onnx")
    images, labels = _seg_list(tmp_path, label_value=7)
    res = run_cli("eval", model, "--data", images, "--labels", labels)
    assert res.code == 1
    err = " ".join(res.err.split())
    assert f"{labels}: label 7 outside the model's 3 classes (0..2, 255 = ignore)" in err, err
    assert str(images) not in err


def test_a_dynamic_size_is_stored_and_eval_and_simulate_resize_to_it(run_cli, tmp_path):
    """A model with dynamic H and W calibrated at --size 6 10: the size is stored with the rest, and eval /
    simulate on an image folder resize to it unless told otherwise (a text recognizer runs at no other
    height); a static model stores no size."""
    from onnxsq.data.stored import KEY, stored_size

    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                           helper.make_node("Flatten", ["c"], ["y"], name="flat")], "fixed-width",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 60])],
                          [onnx.numpy_helper.from_array(np.full((1, 3, 1, 1), 0.1, np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, str(tmp_path / "m.onnx"))  # Flatten to 60 only holds at 6 x 10
    data = _folder(tmp_path / "imgs", hw=8)
    res = run_cli("quantize", tmp_path / "m.onnx", "--calib", data / "c0", "--size", "6", "10",
                  "-o", tmp_path / "q.onnx", "-q")
    assert res.code == 0, res.err
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert stored_size(q) == (6, 10) and json.loads({p.key: p.value for p in q.metadata_props}[KEY])["size"] == [6, 10]
    rep = tmp_path / "s.json"
    res = run_cli("simulate", tmp_path / "q.onnx", "--data", data / "c0", "--report", rep, "-q")
    assert res.code == 0, res.err
    assert "--size 6 10 (stored)" in json.loads(rep.read_text())["summary"]["preprocessing"]
    res = run_cli("eval", tmp_path / "q.onnx", "--data", data, "-q")
    assert res.code == 0, res.err
    static = _channel_mean_classifier(tmp_path / "static.onnx")
    assert run_cli("quantize", static, "--calib", data / "c0", "-o", tmp_path / "sq.onnx", "-q").code == 0
    assert stored_size(onnx.load(str(tmp_path / "sq.onnx"))) is None
