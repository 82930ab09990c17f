"""Data and recipes for the pipeline tests (imported by name: pytest's pythonpath holds tests/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from builders import CLASSES, classifier


def write_npz(path: Path, n: int = 48, seed: int = 0, cin: int = 4, hw: int = 6) -> Path:
    """A learnable toy set: the class is which third of the channels... carries the bright blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n).astype(np.int64)
    x = rng.normal(0, 0.3, (n, cin, hw, hw)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, c % cin] += 1.5
    np.savez(path, x=x, y=y)
    return path


def setup(tmp: Path, *, seed: int = 0) -> dict[str, Path]:
    """model.onnx, train.npz and val.npz in ``tmp``."""
    model = tmp / "model.onnx"
    model.write_bytes(classifier(seed).SerializeToString())
    return {"model": model, "train": write_npz(tmp / "train.npz", 64, seed + 1),
            "val": write_npz(tmp / "val.npz", 32, seed + 2)}


CHEAP_RECIPE = """\
model = "model.onnx"

[data]
train = "train.npz"
val = "val.npz"

[[stage]]
kind = "threshold"
threshold_fraction_low = {fraction}

[[stage]]
kind = "optimize"

[[stage]]
kind = "quantize"
bits = {bits}
calib_count = 16
"""


def write_recipe(tmp: Path, text: str | None = None, name: str = "recipe.toml", **fmt) -> Path:
    path = tmp / name
    values = {"fraction": 0.5, "bits": 8, **fmt}
    path.write_text(text if text is not None else CHEAP_RECIPE.format(**values))
    return path
