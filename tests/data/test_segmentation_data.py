"""ImageLabelData: list files, joint augmentation keeping image and label aligned, bad lists."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxsq.data.images import Preprocess
from onnxsq.data.loader import open_dataset
from onnxsq.data.segmentation import Augment, joint_augment
from onnxsq.errors import DataError


def _write_set(tmp_path, n=3, h=24, w=32):
    """Gray images whose pixel value encodes the label: label = value // 50 (classes 0..4)."""
    rng = np.random.default_rng(0)
    imgs, labs = [], []
    for i in range(n):
        lab = rng.integers(0, 5, (h // 8, w // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        img = (lab * 50 + 10).astype(np.uint8)
        Image.fromarray(np.stack([img] * 3, -1)).save(tmp_path / f"img{i}.png")
        Image.fromarray(lab, mode="L").save(tmp_path / f"lab{i}.png")
        imgs.append(f"img{i}.png")
        labs.append(f"lab{i}.png")
    (tmp_path / "images.txt").write_text("\n".join(imgs) + "\n")
    (tmp_path / "labels.txt").write_text("\n".join(labs) + "\n")
    return tmp_path / "images.txt", tmp_path / "labels.txt"


def test_joint_augmentation_keeps_image_and_label_aligned(tmp_path):
    images, labels = _write_set(tmp_path)
    aug = Augment(scale_prob=1.0, scale_min=0.5, scale_max=2.0, crop=(16, 16), mirror=True)
    data = open_dataset(images, labels=labels, pre=Preprocess(), augment=aug)
    assert data.task == "segmentation" and len(data) == 3
    agree, control = [], []
    for seed in range(12):
        x, y = data.batch(np.arange(3), np.random.default_rng(seed))
        assert x.shape == (3, 3, 16, 16) and y.shape == (3, 16, 16)
        valid = y != 255
        decoded = np.clip(np.round((x[:, 0] - 10) / 50), 0, 4)
        agree.append(np.mean(decoded[valid] == y[valid]))
        flipped = y[:, :, ::-1]  # control: a label that missed the image's mirror/crop disagrees
        control.append(np.mean(decoded[flipped != 255] == flipped[flipped != 255]))
        # padding: where the label is 255 the image is the pad value 0
        assert np.all(x[:, 0][~valid] == 0)
    # bilinear image vs nearest label differ only on class borders
    assert np.mean(agree) > 0.9 and np.mean(control) < 0.6


def test_crop_and_mirror_without_scaling_are_exact():
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 4, (9, 11))
    img = lab[:, :, None].astype(np.float32) * 10
    for seed in range(10):
        a, b = joint_augment(img, lab, Augment(mirror=True), (12, 8), np.random.default_rng(seed))
        assert a.shape == (12, 8, 1) and b.shape == (12, 8)
        ok = b != 255
        assert np.array_equal(a[..., 0][ok], b[ok] * 10.0)
        assert ok.sum() == 9 * 8  # 3 padded rows, labelled ignore


def test_evaluation_resizes_labels_nearest(tmp_path):
    images, labels = _write_set(tmp_path, n=2)
    data = open_dataset(images, labels=labels, pre=Preprocess(size=(10, 12)))
    x, y = data.batch(np.arange(2))
    assert x.shape == (2, 3, 10, 12) and y.shape == (2, 10, 12) and set(np.unique(y)) <= set(range(5))


def test_bad_lists_are_one_line_errors(tmp_path):
    images, labels = _write_set(tmp_path, n=2)
    (tmp_path / "short.txt").write_text("lab0.png\n")
    with pytest.raises(DataError, match="lists 2 images but .* lists 1 labels"):
        open_dataset(images, labels=tmp_path / "short.txt")
    (tmp_path / "missing.txt").write_text("lab0.png\nnope.png\n")
    with pytest.raises(DataError, match="nope.png: file not found"):
        open_dataset(images, labels=tmp_path / "missing.txt")
    with pytest.raises(DataError, match="needs its label list"):
        open_dataset(images)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "lab1.png")  # wrong size
    data = open_dataset(images, labels=labels)
    with pytest.raises(DataError, match="but its label"):
        data.batch(np.array([1]))
