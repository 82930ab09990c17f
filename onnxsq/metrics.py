"""Accuracy, confusion matrix and IoU (the original's Accuracy and IOUAccuracy layers).

Segmentation metrics come from one confusion matrix accumulated over the whole set (rows: true
class, columns: predicted class), never from per-image averages; pixels with the ignore label are
skipped. ``IoU_c = TP / (TP + FP + FN)`` for classes whose denominator is non-zero; the mean is over
those classes only.
"""

from __future__ import annotations

import numpy as np


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows of ``logits`` (N, C) have their label among the ``k`` largest scores."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts of (true, predicted); ignore-label pixels skipped.

    Labels outside ``[0, num_classes)`` other than ``ignore`` are an error (a wrong class count).
    """
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        bad = int(target.min()) if target.min() < 0 else int(target.max())
        raise ValueError(f"label {bad} outside the model's {num_classes} classes (0..{num_classes - 1}, "
                         f"{ignore} = ignore)")
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU (NaN where TP + FP + FN == 0) and the mean over the defined classes."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)
    defined = iou[~np.isnan(iou)]
    return iou, float(defined.mean()) if defined.size else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


class ClassificationMeter:
    """Running top-1 / top-5 accuracy."""

    def __init__(self) -> None:
        self.n = self.top1 = self.top5 = 0
        self.classes = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits).reshape(len(labels), -1)
        self.classes = logits.shape[1]
        self.n += len(labels)
        self.top1 += topk_correct(logits, labels, 1)
        self.top5 += topk_correct(logits, labels, 5)

    def result(self) -> dict[str, float]:
        out = {"samples": self.n, "top1": self.top1 / self.n if self.n else float("nan")}
        if self.classes > 5:
            out["top5"] = self.top5 / self.n if self.n else float("nan")
        return out


class SegmentationMeter:
    """Confusion matrix accumulated over every pixel of every image."""

    def __init__(self, num_classes: int, ignore: int = 255) -> None:
        self.cm = np.zeros((num_classes, num_classes), np.int64)
        self.num_classes, self.ignore = num_classes, ignore
        self.images = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """``logits`` (N, C, H, W), ``labels`` (N, H, W)."""
        self.images += len(labels)
        self.cm += confusion_matrix(np.argmax(logits, axis=1), labels, self.num_classes, self.ignore)

    def result(self) -> dict[str, object]:
        iou, miou = iou_from_confusion(self.cm)
        return {"images": self.images, "pixels": int(self.cm.sum()), "pixel_accuracy": pixel_accuracy(self.cm),
                "mean_iou": miou, "per_class_iou": [None if np.isnan(v) else float(v) for v in iou]}
