"""Random crops of image inputs, stretched back to the input's size: more samples from a handful of images.

Label-free fine-tuning (:mod:`onnxsq.training.finetune`) trains on them (distillation needs inputs, not labels:
a handful of images gives a classifier a handful of outputs to fit, which it over-fits at once), and the
quantize pass's whole-model choices measure on them (``QuantizeConfig.report_crops``: GPTQ's input
statistics and its check, the scale-alignment check, the report), so that a choice made on a few calibration
images is made on more than their few exact framings.

A crop keeps 60-100% of each side at a random place and is stretched back to the input's size (bilinear:
each output pixel centre maps into the crop box, clamped to it); images only: a float32 4-D input whose
channel axis (1, 3 or 4 values) is axis 1 (NCHW) or 3 (NHWC). Other inputs are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CHANNELS = (1, 3, 4)


def spatial_axes(x: np.ndarray) -> tuple[int, int] | None:
    """(H axis, W axis) of an image batch, or None where ``x`` does not look like one."""
    if x.ndim != 4 or x.dtype != np.float32:
        return None
    axes = (2, 3) if x.shape[1] in CHANNELS else (1, 2) if x.shape[3] in CHANNELS else None
    # an empty image has no crop
    return axes if axes is not None and x.shape[axes[0]] > 0 and x.shape[axes[1]] > 0 else None


def _bilinear(x: np.ndarray, axes: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The crop ``box = (top, left, height, width)`` of ``x`` stretched back to ``x``'s size."""
    out = x
    for axis, start, length in ((axes[0], box[0], box[2]), (axes[1], box[1], box[3])):
        size = x.shape[axis]
        pos = start + (np.arange(size) + 0.5) * length / size - 0.5
        pos = np.clip(pos, start, start + length - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, start + length - 1)
        shape = [1] * x.ndim
        shape[axis] = size
        frac = (pos - lo).astype(np.float32).reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out.astype(np.float32)


def crops(feeds: Sequence[Mapping[str, np.ndarray]], name: str, per_sample: int, seed: int) -> list[dict]:
    """``per_sample`` seeded random crops of every feed's image input ``name`` (the feeds themselves first);
    the feeds alone where ``name`` is no image."""
    out = [dict(f) for f in feeds]
    if per_sample < 1 or spatial_axes(np.asarray(feeds[0][name])) is None:
        return out
    rng = np.random.default_rng(seed)
    for f in feeds:
        x = np.asarray(f[name])
        axes = spatial_axes(x)
        h, w = x.shape[axes[0]], x.shape[axes[1]]
        for _ in range(per_sample):
            ch, cw = max(1, int(h * rng.uniform(0.6, 1.0))), max(1, int(w * rng.uniform(0.6, 1.0)))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out.append({**f, name: _bilinear(x, axes, (top, left, ch, cw))})
    return out


def image_input(feed: Mapping[str, np.ndarray]) -> str | None:
    """The first input of ``feed`` that looks like an image batch (:func:`spatial_axes`), or None."""
    return next((k for k, v in feed.items() if spatial_axes(np.asarray(v)) is not None), None)


def with_crops(feeds: Sequence[Mapping[str, np.ndarray]], per_sample: int, seed: int) -> list[dict]:
    """The feeds, then ``per_sample`` seeded crops of each (of its first image input, :func:`image_input`);
    the feeds alone where they hold no image or ``per_sample`` is 0."""
    name = image_input(feeds[0]) if feeds else None
    if name is None or per_sample < 1:
        return [dict(f) for f in feeds]
    return crops(feeds, name, per_sample, seed)
