"""Evaluate a model on labelled data: accuracy for classification, IoU for segmentation.

The model runs in onnxruntime (graph optimizations off, as everywhere in onnxsq). The task follows
from the data; the report (pass name ``eval``) carries top-1/top-5, or pixel accuracy, mean IoU and
per-class IoU from one confusion matrix over the whole set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx

from .data.loader import Dataset, Loader, as_dataset
from .errors import DataError, UnsupportedModelError, first_line
from .graph import data_inputs
from .metrics import ClassificationMeter, SegmentationMeter
from .model_io import ModelLike, load_model
from .report import Report
from .runtime import make_session, providers_for

log = logging.getLogger(__name__)


def evaluate(model: ModelLike, data: Dataset, *, batch_size: int = 64, device: str = "cpu",
             ignore_label: int = 255, progress: Callable[[int, int], None] | None = None) -> Report:
    """Run ``model`` over ``data`` (a dataset, or a path :func:`onnxsq.open_dataset` reads with the model's
    input size) and return a Report with the task's metrics in ``summary``."""
    model = load_model(model, check=False) if not isinstance(model, onnx.ModelProto) else model
    data = as_dataset(data, model)
    inputs = [vi.name for vi in data_inputs(model)]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"eval needs a model with one input, this one has {len(inputs)}")
    sess = make_session(model, providers=providers_for(device))
    out_name = sess.get_outputs()[0].name
    # A model exported with a fixed batch of 1 still evaluates: feed it one sample at a time.
    dim0 = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    bs = 1 if dim0 == 1 else batch_size
    loader = Loader(data, bs)
    total = loader.batches_per_epoch()
    meter: ClassificationMeter | SegmentationMeter | None = None
    for b, (x, y) in enumerate(loader.epoch()):
        try:
            logits = sess.run([out_name], {inputs[0]: x})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime reports shape mismatches as its own types
            raise DataError(f"{data.where}: the model rejects a batch of shape {tuple(x.shape)}: "
                            f"{first_line(exc)}") from None
        if meter is None:
            if data.task == "segmentation":
                if logits.ndim != 4:
                    raise DataError(f"{data.where}: segmentation labels, but the model's output has shape "
                                    f"{logits.shape} (want N×classes×H×W)")
                meter = SegmentationMeter(logits.shape[1], ignore_label)
            else:
                meter = ClassificationMeter()
        if data.task == "segmentation" and logits.shape[2:] != y.shape[1:]:
            raise DataError(f"{data.where}: the model outputs {logits.shape[2:]} maps but labels are {y.shape[1:]}")
        try:
            meter.update(np.asarray(logits), y)
        except ValueError as exc:  # a label out of range: name the labels' file, not the images'
            raise DataError(f"{getattr(data, 'label_where', data.where)}: {exc}") from None
        if progress is not None:
            progress(b + 1, total)
    report = Report("eval")
    assert meter is not None
    result = meter.result()
    report.summary.update({"task": data.task, **result})
    if data.task == "segmentation":
        for c, v in enumerate(result["per_class_iou"]):
            report.add(f"class {c}", "IoU", "measured" if v is not None else "skipped",
                       "" if v is not None else "no pixels of this class in labels or predictions", iou=v)
    log.info("eval: %s", {k: v for k, v in result.items() if k != "per_class_iou"})
    return report

