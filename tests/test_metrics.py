"""Accuracy and IoU against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from onnxsq.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    confusion_matrix,
    iou_from_confusion,
    pixel_accuracy,
    topk_correct,
)


def test_iou_against_a_hand_computed_confusion_matrix():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 4)
    #            pred 0  1  2  3
    expected = [[1, 1, 0, 0],  # true 0: (0,0) right, (0,1) as 1
                [1, 2, 0, 0],  # true 1: two right, one as 0
                [1, 0, 1, 0],  # true 2: one right, one as 0; the 255 pixel is skipped
                [0, 0, 0, 0]]
    assert cm.tolist() == expected
    iou, miou = iou_from_confusion(cm)
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+2+1), class 1: 2/(2+1+1), class 2: 1/(1+0+1); class 3 undefined
    assert iou[:3] == pytest.approx([1 / 4, 2 / 4, 1 / 2]) and np.isnan(iou[3])
    assert miou == pytest.approx((1 / 4 + 2 / 4 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 7)


def test_segmentation_meter_accumulates_over_the_set_not_per_image():
    m = SegmentationMeter(2)
    a = np.zeros((1, 2, 1, 4), np.float32)
    a[0, 1, 0, :3] = 1  # predicts 1,1,1,0
    m.update(a, np.array([[[1, 1, 0, 0]]]))
    b = np.zeros((1, 2, 1, 2), np.float32)  # predicts 0,0
    m.update(b, np.array([[[0, 255]]]))
    r = m.result()
    assert r["pixels"] == 5 and r["pixel_accuracy"] == pytest.approx(4 / 5)
    assert r["per_class_iou"] == pytest.approx([2 / 3, 2 / 3]) and r["mean_iou"] == pytest.approx(2 / 3)


def test_label_beyond_classes_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros(3), np.array([0, 1, 5]), 3)


def test_topk_and_classification_meter():
    logits = np.array([[0.1, 0.9, 0.0, 0, 0, 0], [0.5, 0.2, 0.3, 0, 0, 0], [0, 0, 0, 0, 0.2, 0.1]])
    labels = np.array([1, 2, 5])
    assert topk_correct(logits, labels, 1) == 1 and topk_correct(logits, labels, 2) == 3
    m = ClassificationMeter()
    m.update(logits, labels)
    assert m.result() == {"samples": 3, "top1": pytest.approx(1 / 3), "top5": 1.0}
    m5 = ClassificationMeter()
    m5.update(logits[:, :5], np.array([1, 2, 4]))
    assert "top5" not in m5.result()  # only meaningful with more than 5 classes
