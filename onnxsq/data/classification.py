"""Classification (and array) datasets: ``.npz`` arrays and image folders.

* ``.npz`` with ``x`` (N, C, H, W) float32 and ``y``: (N,) integer class labels → classification,
  (N, H, W) integer label maps → segmentation (the task follows from the label shape).
* an image folder with one sub-folder per class (sorted names are classes 0, 1, ...), each image
  preprocessed by :mod:`onnxsq.data.images` exactly as calibration images are.

Every dataset answers ``len()`` and ``batch(indices, rng) -> (x, y)``; ``rng`` is the augmentation
generator (None at evaluation); these two never augment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import Preprocess, is_image, load_image


def task_for_labels(y: np.ndarray, where: str) -> str:
    """classification for (N,) labels, segmentation for (N, H, W); anything else is an error."""
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, not {y.dtype}")
    if y.ndim == 1:
        return "classification"
    if y.ndim == 3:
        return "segmentation"
    raise DataError(f"{where}: label shape {tuple(y.shape)} fits no task "
                    "(classification wants (N,), segmentation (N, H, W))")


class ArrayDataset:
    """In-memory arrays (``x`` N×C×H×W float32, ``y`` int) for either task."""

    in_memory = True  # a batch is an indexing: the loader makes it in the caller's thread

    def __init__(self, x: np.ndarray, y: np.ndarray, *, where: str = "arrays", task: str | None = None) -> None:
        if x.ndim < 2 or len(x) != len(y):
            raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}" if x.ndim >= 2 else
                            f"{where}: x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if len(x) == 0:
            raise DataError(f"{where}: no samples")
        found = task_for_labels(y, where)
        if task is not None and task != found:
            raise DataError(f"{where}: --task {task} but the labels have shape {tuple(y.shape)} ({found})")
        if found == "segmentation" and x.ndim == 4 and x.shape[2:] != y.shape[1:]:
            raise DataError(f"{where}: images are {x.shape[2:]} but label maps {y.shape[1:]}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.y = np.ascontiguousarray(y, dtype=np.int64)
        self.task = found
        self.where = where
        self.label_where = f"{where} (y)"  # what label errors name
        labels = self.y[self.y != 255] if found == "segmentation" else self.y
        self.num_classes = int(labels.max()) + 1 if labels.size else 0

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.x[indices], self.y[indices]


def load_npz(path: str | Path, *, task: str | None = None) -> ArrayDataset:
    path = Path(path)
    try:
        with np.load(path) as npz:
            if "x" not in npz.files or "y" not in npz.files:
                raise DataError(f"{path}: an .npz dataset needs arrays 'x' and 'y' (has {', '.join(npz.files)})")
            x, y = npz["x"], npz["y"]
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad files
        raise DataError(f"{path}: cannot read as .npz ({exc})") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x must be float (N, C, H, W), got {x.dtype}")
    return ArrayDataset(x, y, where=str(path), task=task)


class ImageFolderDataset:
    """``root/<class>/<image>``: classes are the sorted sub-folder names."""

    task = "classification"

    def __init__(self, root: str | Path, pre: Preprocess) -> None:
        root = Path(root)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{root}: no class sub-folders (an image folder needs one sub-folder per class)")
        self.files: list[Path] = []
        labels: list[int] = []
        for i, c in enumerate(classes):
            imgs = sorted(p for p in (root / c).iterdir() if p.is_file() and is_image(p))
            self.files += imgs
            labels += [i] * len(imgs)
        if not self.files:
            raise DataError(f"{root}: no images in its class sub-folders")
        self.classes = classes
        self.y = np.asarray(labels, dtype=np.int64)
        self.pre = pre
        self.num_classes = len(classes)
        self.where = str(root)

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([load_image(self.files[i], self.pre) for i in indices])
        return x, self.y[indices]
