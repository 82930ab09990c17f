"""Segmentation training on the CPU through the ConvTranspose/Resize rewrites, on a synthetic
shapes set written as image and label list files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from train_helpers import needs_training


def shapes_dataset(root, n: int, seed: int, size: int = 32):
    """Noisy RGB images with a square (class 1) and a disc (class 2) on background 0."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    imgs, labs = [], []
    for i in range(n):
        lab = np.zeros((size, size), np.uint8)
        s, (r, c) = rng.integers(6, 12), rng.integers(0, size - 12, 2)
        lab[r:r + s, c:c + s] = 1
        rad, (cy, cx) = rng.integers(4, 7), rng.integers(6, size - 6, 2)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad ** 2] = 2
        colour = np.array([[60, 60, 60], [200, 40, 40], [40, 40, 200]])[lab]
        img = np.clip(colour + rng.normal(0, 25, colour.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i}.png")
        Image.fromarray(lab, mode="L").save(root / f"lab{i}.png")
        imgs.append(f"img{i}.png")
        labs.append(f"lab{i}.png")
    (root / "images.txt").write_text("\n".join(imgs) + "\n")
    (root / "labels.txt").write_text("\n".join(labs) + "\n")
    return root / "images.txt", root / "labels.txt"


def seg_model(seed: int = 0) -> onnx.ModelProto:
    """conv s2 → conv s2 → ConvTranspose ×2 (grouped) → 1×1 classifier → linear Resize ×2; BN after convs."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def t(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def bn_relu(x, c, name):
        ins = [t(f"{name}.{k}", v) for k, v in (("scale", np.ones(c)), ("bias", np.zeros(c)),
                                               ("mean", np.zeros(c)), ("var", np.ones(c)))]
        nodes.append(helper.make_node("BatchNormalization", [x, *ins], [f"{name}_bn"], name=f"{name}_bn"))
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    x = "input"
    for i, (cin, cout) in enumerate(((3, 16), (16, 16))):
        w = t(f"conv{i}.weight", rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9)))
        nodes.append(helper.make_node("Conv", [x, w], [f"conv{i}"], name=f"conv{i}", pads=[1, 1, 1, 1], strides=[2, 2]))
        x = bn_relu(f"conv{i}", cout, f"conv{i}")
    w = t("up.weight", rng.standard_normal((16, 4, 4, 4)) * 0.25)
    nodes.append(helper.make_node("ConvTranspose", [x, w], ["up"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                                  group=4))
    x = bn_relu("up", 16, "up")
    w = t("cls.weight", rng.standard_normal((3, 16, 1, 1)) * 0.3)
    nodes.append(helper.make_node("Conv", [x, w, t("cls.bias", np.zeros(3))], ["cls"], name="cls"))
    nodes.append(helper.make_node("Resize", ["cls", t("roi", np.zeros(0)), t("scales", [1, 1, 2, 2])], ["logits"],
                                  name="upsample", mode="linear"))
    graph = helper.make_graph(
        nodes,
        "tiny_seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 32, 32])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 6
    onnx.checker.check_model(m)
    return m


@needs_training
@pytest.mark.slow
def test_segmentation_trains_on_cpu_and_keeps_its_ops(tmp_path):
    import onnxsq
    from onnxsq.data.images import Preprocess
    from onnxsq.data.loader import open_dataset
    from onnxsq.data.segmentation import Augment

    pre = Preprocess(size=(32, 32), mean=(128.0, 128.0, 128.0), std=(64.0, 64.0, 64.0))
    images, labels = shapes_dataset(tmp_path / "train", 160, 0)
    train = open_dataset(images, labels=labels, pre=pre, augment=Augment(mirror=True))
    images, labels = shapes_dataset(tmp_path / "val", 48, 1)
    val = open_dataset(images, labels=labels, pre=pre)
    model = seg_model()
    before = onnxsq.evaluate(model, val).summary["mean_iou"]
    trained, report = onnxsq.train(model, train, val=val, epochs=12, batch_size=16, lr=0.05, lr_policy="poly",
                                   weight_decay=1e-4, display=0)
    rewritten = {c.op: c.action for c in report.candidates if c.op in ("ConvTranspose", "Resize")}
    assert rewritten == {"ConvTranspose": "rewritten for training", "Resize": "rewritten for training"}
    assert report.summary["task"] == "segmentation"
    print("mean IoU before", before, "after", report.summary["val_mean_iou"], report.summary["val_per_class_iou"])
    assert report.summary["val_mean_iou"] >= 0.75 > before
    # the user's model comes back with its own ops, IR and opset
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in model.graph.node]
    assert trained.ir_version == 6 and trained.opset_import[0].version == 11


@needs_training
def test_a_label_out_of_range_names_the_label_list(tmp_path):
    import onnxsq
    from onnxsq.data.images import Preprocess
    from onnxsq.data.loader import open_dataset
    from onnxsq.errors import DataError

    images, labels = shapes_dataset(tmp_path / "bad", 4, 3)
    Image.fromarray(np.full((32, 32), 7, np.uint8), mode="L").save(tmp_path / "bad" / "lab0.png")
    pre = Preprocess(size=(32, 32), mean=(128.0, 128.0, 128.0), std=(64.0, 64.0, 64.0))
    data = open_dataset(images, labels=labels, pre=pre)
    with pytest.raises(DataError, match=r"labels\.txt: label 7 outside the model's 3 classes"):
        onnxsq.train(seg_model(), data, iters=1, batch_size=4, display=0)
