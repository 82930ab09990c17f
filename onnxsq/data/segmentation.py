"""Segmentation data: the original's ImageLabelData (an image list and a label list read in step).

Joint augmentation, with one random draw applied to both image and label so they stay aligned:

* random scale: with probability ``scale_prob`` both are resized by ``s ~ U[scale_min, scale_max]``
  (image bilinear, label nearest neighbour, so no invented classes);
* crop to ``crop`` (H, W): a random window; where the scaled image is smaller, the image is padded
  with the mean (0 after normalisation) and the label with the ignore value 255;
* mirror: a horizontal flip with probability 0.5.

Without augmentation (evaluation) image and label are resized to ``pre.size`` when it is given.
Label files are single-channel images (mode L or P: the palette *indices* are the classes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import Preprocess, decode, normalize, resize

IGNORE = 255


@dataclass(frozen=True)
class Augment:
    """The ImageLabelData augmentation parameters."""

    scale_prob: float = 0.0
    scale_min: float = 1.0
    scale_max: float = 1.0
    crop: tuple[int, int] | None = None  # (H, W); None → pre.size, or no crop
    mirror: bool = False


def read_list(path: str | Path) -> list[Path]:
    """Paths from a list file, one per line; relative paths are relative to the list's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line.split()[0])
            out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise DataError(f"{path}: empty list file")
    return out


def decode_label(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: a label map must be a single-channel (L/P) image, not mode {im.mode}")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode label image ({exc})") from None


def _pad_to(arr: np.ndarray, h: int, w: int, value: float) -> np.ndarray:
    ph, pw = max(h - arr.shape[0], 0), max(w - arr.shape[1], 0)
    if not ph and not pw:
        return arr
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, constant_values=value)


def joint_augment(img: np.ndarray, lab: np.ndarray, aug: Augment, crop: tuple[int, int] | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random scale/crop/mirror applied to an HWC float image and its HW label together."""
    if aug.scale_prob > 0 and rng.random() < aug.scale_prob:
        s = rng.uniform(aug.scale_min, aug.scale_max)
        size = (max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s)))
        img = _resize_float(img, size)
        lab = resize(lab.astype(np.uint8) if lab.max(initial=0) < 256 else lab, size, nearest=True).astype(np.int64)
    if crop is not None:
        ch, cw = crop
        img = _pad_to(img, ch, cw, 0.0)
        lab = _pad_to(lab, ch, cw, IGNORE)
        top = int(rng.integers(0, img.shape[0] - ch + 1))
        left = int(rng.integers(0, img.shape[1] - cw + 1))
        img, lab = img[top:top + ch, left:left + cw], lab[top:top + ch, left:left + cw]
    if aug.mirror and rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def _resize_float(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HWC float image (Pillow's mode F, channel by channel)."""
    from PIL import Image

    h, w = size
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c])).resize((w, h), Image.BILINEAR))
             for c in range(img.shape[2])]
    return np.stack(chans, axis=2).astype(np.float32)


class ImageLabelDataset:
    """Image list + label list read in step, with optional joint augmentation."""

    task = "segmentation"

    def __init__(self, images: str | Path, labels: str | Path, pre: Preprocess, augment: Augment | None = None) -> None:
        self.images = read_list(images)
        self.labels = read_list(labels)
        if len(self.images) != len(self.labels):
            raise DataError(f"{images} lists {len(self.images)} images but {labels} lists {len(self.labels)} labels")
        for p in (*self.images, *self.labels):
            if not p.is_file():
                raise DataError(f"{p}: file not found (listed in {images if p in self.images else labels})")
        if pre.layout != "nchw":
            raise DataError("segmentation data supports the nchw layout only")
        self.pre = pre
        self.augment = augment or Augment()
        self.where = str(images)
        self.label_where = str(labels)  # what label errors name (a label out of range is in these files)
        self.num_classes = 0  # unknown until labels are read; the model's output says it

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, i: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        raw = decode(self.images[i], self.pre.channels)
        lab = decode_label(self.labels[i])
        if raw.shape[:2] != lab.shape:
            raise DataError(f"{self.images[i]} is {raw.shape[0]}x{raw.shape[1]} but its label "
                            f"{self.labels[i]} is {lab.shape[0]}x{lab.shape[1]}")
        if rng is None:  # evaluation: the whole image, resized to the model's size when given
            if self.pre.size is not None:
                raw = resize(raw, self.pre.size)
                lab = resize(lab.astype(np.uint8), self.pre.size, nearest=True).astype(np.int64)
            return normalize(raw, self.pre), lab
        crop = self.augment.crop or self.pre.size
        img = normalize(raw, replace(self.pre, layout="nhwc"))
        img, lab = joint_augment(img, lab, self.augment, crop, rng)
        return np.ascontiguousarray(img.transpose(2, 0, 1)), lab

    def batch(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.sample(int(i), rng) for i in indices]
        shapes = {p[0].shape for p in pairs}
        if len(shapes) > 1:
            raise DataError(f"{self.where}: images of different sizes in one batch {sorted(shapes)}; "
                            "pass --size or a crop")
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
