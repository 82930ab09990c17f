"""Built-in data sources for recipes: ``[data] source = "sklearn-digits"`` or ``"synthetic-shapes"``.

A source writes ``train.npz`` and ``val.npz`` (``x`` N×C×H×W float32, ``y`` labels) into the
pipeline's work directory once; later runs reuse the files, so their fingerprints (and with them
every cached stage) stay put. Both sources are seeded and deterministic. On the command line,
``--data sklearn-digits`` (``:val`` for the validation split) writes them once into :func:`data_cache`.

* ``sklearn-digits``: scikit-learn's copy of the UCI handwritten digits (1,797 real 8×8 images,
  pixel values 0–16 scaled to [0, 1]), split by a seeded permutation (default 25% validation:
  1,347 train / 450 val). Needs scikit-learn (a test/demo extra of onnxsq).
* ``synthetic-shapes``: a segmentation set standing in for Cityscapes: noisy, shaded backgrounds
  (class 0) with discs (1), rectangles (2), triangles (3) and crosses (4) in class-tinted random
  colours; labels N×H×W int64. Later shapes occlude earlier ones, as objects do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InvalidOptionError


def _digits(seed: int = 0, val_fraction: float = 0.25) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data source 'sklearn-digits' needs scikit-learn: pip install scikit-learn") from None
    if not 0.0 < val_fraction < 1.0:
        raise InvalidOptionError(f"sklearn-digits: val_fraction must be in (0, 1), got {val_fraction!r}")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = math.ceil(len(y) * val_fraction)  # as scikit-learn's train_test_split counts
    val, train = order[:n_val], order[n_val:]
    return {"train": (x[train], y[train]), "val": (x[val], y[val])}


def _shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.08, 0.22) * size
    cy, cx = rng.uniform(r, size - r, 2)
    if kind == 1:  # disc
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:  # rectangle, random aspect
        h, w = r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0)
        return (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= w)
    if kind == 3:  # upward triangle
        top, base = cy - r, cy + r
        half = (yy - top) / (2 * r) * r
        return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
    arm = max(r / 3.5, 1.0)  # cross
    return ((np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= r)) | ((np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= r))


def _shapes_split(n: int, size: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tints = np.array([[0.9, 0.3, 0.3], [0.3, 0.9, 0.3], [0.3, 0.3, 0.9], [0.9, 0.9, 0.3],
                      [0.9, 0.3, 0.9], [0.3, 0.9, 0.9], [0.6, 0.6, 0.6]], np.float32)
    x = np.empty((n, 3, size, size), np.float32)
    y = np.zeros((n, size, size), np.int64)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    for i in range(n):
        gy, gx = rng.uniform(-0.15, 0.15, 2)
        img = (rng.uniform(0.2, 0.5, 3)[:, None, None] + gy * ramp[None, :, None] + gx * ramp[None, None, :])
        img = np.broadcast_to(img, (3, size, size)).astype(np.float32).copy()
        for _ in range(rng.integers(1, 5)):
            kind = int(rng.integers(1, classes))
            mask = _shape_mask((kind - 1) % 4 + 1, size, rng)
            colour = tints[(kind - 1) % len(tints)] * rng.uniform(0.7, 1.1) + rng.normal(0, 0.08, 3)
            img[:, mask] = colour[:, None].astype(np.float32)
            y[i][mask] = kind
        img += rng.normal(0, 0.05, img.shape).astype(np.float32)
        x[i] = (img - 0.5) / 0.25
    return x, y


def _shapes(seed: int = 0, train: int = 384, val: int = 96, size: int = 64,
            classes: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if classes < 2 or train < 1 or val < 1 or size < 8:
        raise InvalidOptionError("synthetic-shapes: needs classes >= 2, train >= 1, val >= 1, size >= 8")
    rng = np.random.default_rng(seed)
    return {"train": _shapes_split(train, size, classes, rng), "val": _shapes_split(val, size, classes, rng)}


SOURCES: dict[str, Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]] = {
    "sklearn-digits": _digits,
    "synthetic-shapes": _shapes,
}
TASKS = {"sklearn-digits": "classification", "synthetic-shapes": "segmentation"}


GENERATOR_VERSION = 2  # bump when a generator's output changes: new files, and the stages after re-run


def source_id(spec: dict[str, Any]) -> str:
    """A short stable name for a source, its parameters and the generator version (the files' prefix)."""
    digest = hashlib.sha256(json.dumps([GENERATOR_VERSION, spec], sort_keys=True).encode()).hexdigest()[:10]
    return f"{spec['name']}-{digest}"


def materialize(spec: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Write (once) and return ``{"train": path, "val": path}`` for the source ``spec``:
    ``DIRECTORY/NAME-train.npz`` and ``NAME-val.npz``, beside ``NAME.source.json`` (the parameters and
    :func:`source_id` they were made with; other parameters write them anew).

    ``spec`` is ``{"name": ..., **parameters}``; unknown parameters are refused by name.
    """
    name = spec["name"]
    if name not in SOURCES:
        raise InvalidOptionError(f"unknown data source {name!r} (known: {', '.join(SOURCES)})")
    paths = {split: directory / f"{name}-{split}.npz" for split in ("train", "val")}
    stamp = directory / f"{name}.source.json"
    made = {"source": source_id(spec), "spec": spec}
    try:
        current = json.loads(stamp.read_text()) if stamp.is_file() else None
    except (OSError, ValueError):
        current = None
    if current == made and all(p.is_file() for p in paths.values()):
        return paths
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        splits = SOURCES[name](**params)
    except TypeError as exc:
        raise InvalidOptionError(f"data source {name!r}: {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # written last: files without it are made again
    for split, (x, y) in splits.items():
        tmp = paths[split].with_name(f".{paths[split].name}.tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, paths[split])
    stamp.write_text(json.dumps(made, sort_keys=True, indent=1) + "\n")
    return paths


def data_cache() -> Path:
    """Where ``--data sklearn-digits`` (a source named on the command line) is written:
    ``$ONNXSQ_DATA``, else ``$XDG_CACHE_HOME/onnxsq/data``, else ``~/.cache/onnxsq/data``."""
    if os.environ.get("ONNXSQ_DATA"):
        return Path(os.environ["ONNXSQ_DATA"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "onnxsq" / "data"


def named_split(text: str) -> Path | None:
    """``NAME`` or ``NAME:train`` / ``NAME:val`` of a built-in source → its file (written once, with the
    source's default parameters, into :func:`data_cache`); None when ``text`` names no source."""
    name, _, split = text.partition(":")
    if name not in SOURCES:
        return None
    split = split or "train"
    if split not in ("train", "val"):
        raise InvalidOptionError(f"{text}: a built-in data source's split is train or val, not {split!r}")
    return materialize({"name": name}, data_cache())[split]
