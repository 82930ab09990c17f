"""Image decoding and preprocessing shared by calibration (quantize) and training/eval data.

``x = (pixel - mean) / std`` with mean and std in 0–255 pixel units, per channel, in the channel
order the model expects. Decoding is Pillow's; resizing is bilinear for images and nearest for labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InvalidOptionError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class Preprocess:
    """How to turn an image file into a model input tensor (without the batch axis)."""

    size: tuple[int, int] | None = None  # (H, W); None keeps the decoded size
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channel_order: str = "rgb"  # rgb | bgr
    layout: str = "nchw"  # nchw | nhwc
    channels: int = 3  # 1 → grayscale

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise InvalidOptionError(f"--channel-order must be rgb or bgr, not {self.channel_order!r}")
        if self.layout not in ("nchw", "nhwc"):
            raise InvalidOptionError(f"--layout must be nchw or nhwc, not {self.layout!r}")
        if self.channels not in (1, 3):
            raise InvalidOptionError(f"images can feed 1 or 3 channels, the model wants {self.channels}")
        if any(s == 0 for s in self.std):
            raise InvalidOptionError("--std must not contain 0")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise InvalidOptionError(f"--size must be two positive integers H W, not {self.size}")

    def _per_channel(self, values: Sequence[float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float32)
        if v.size == 1 or self.channels == 1:
            return v[:1] if self.channels == 1 else np.repeat(v[:1], 3)
        return v


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def decode(path: str | Path, channels: int = 3) -> np.ndarray:
    """Decode an image file to HWC uint8 (RGB, or one channel when ``channels`` is 1)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def resize(arr: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize an HWC uint8 image (bilinear) or an HW label map (``nearest``) to ``(H, W)``."""
    from PIL import Image

    h, w = size
    if arr.shape[0] == h and arr.shape[1] == w:
        return arr
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.asarray(Image.fromarray(arr[:, :, 0]).resize((w, h), resample))[:, :, None]
    return np.asarray(Image.fromarray(arr).resize((w, h), resample))


def normalize(hwc: np.ndarray, pre: Preprocess) -> np.ndarray:
    """HWC uint8 (RGB) → float32 tensor in the model's channel order and layout (no batch axis)."""
    x = hwc.astype(np.float32)
    if pre.channels == 3 and pre.channel_order == "bgr":
        x = x[:, :, ::-1]
    x = (x - pre._per_channel(pre.mean)) / pre._per_channel(pre.std)
    if pre.layout == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    """Decode, resize and normalize one image file."""
    arr = decode(path, pre.channels)
    if pre.size is not None:
        arr = resize(arr, pre.size)
    return normalize(arr, pre)
