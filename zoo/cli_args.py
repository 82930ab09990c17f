"""How to call onnxsq's commands on a zoo model: its image preprocessing as CLI options, its input
shapes as ``--input-shape``, and calibration/evaluation data (real photos, or seeded feeds for
models that take no image). Shared by the zoo tests and ``bench/zoo.py``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from . import ZooModel


def takes_images(m: ZooModel) -> bool:
    return m.preprocess is not None and m.layout in ("nchw", "nhwc")


def input_shape_args(m: ZooModel) -> list[str]:
    """``--input-shape NAME:DIMS`` for every input: the zoo's shapes that run (dynamic dims filled)."""
    out: list[str] = []
    for name, dims in m.input_shapes.items():
        out += ["--input-shape", f"{name}:{'x'.join(str(d) for d in dims)}"]
    return out


def preprocess_args(m: ZooModel) -> list[str]:
    """onnxsq's image options for ``m``: ``x = (pixel - mean) / std`` in 0-255 units, so the zoo's
    ``(pixel * scale - mean) / std`` becomes mean/scale and std/scale."""
    p = m.preprocess
    if p is None:
        return []
    name = next(iter(m.input_shapes))
    shape = m.input_shapes[name]
    h, w = (shape[2], shape[3]) if m.layout == "nchw" else (shape[1], shape[2])
    mean = [v / p.scale for v in p.mean] * (3 if len(p.mean) == 1 else 1)
    std = [v / p.scale for v in p.std] * (3 if len(p.std) == 1 else 1)
    args = ["--size", str(h), str(w), "--mean", *map(_num, mean[:3]), "--std", *map(_num, std[:3]),
            "--layout", m.layout]
    if p.channels == "BGR":
        args += ["--channel-order", "bgr"]
    return args


def _num(v: float) -> str:
    return f"{v:.6g}"


def crops(m: ZooModel, images: list[Path], per_image: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Seeded random crops (50-100% of each side) of ``images`` as ``m``'s input feeds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    name = m.inputs[0]["name"]
    out = []
    for path in images:
        with Image.open(path) as img:
            img = img.convert("RGB")
            for _ in range(per_image):
                w, h = img.size
                cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                buf = io.BytesIO()
                img.crop((x0, y0, x0 + cw, y0 + ch)).save(buf, format="PNG")
                buf.seek(0)
                out.append({name: m.image_input(buf)})
    return out


def samples(m: ZooModel, images: list[Path], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` feeds for ``m``: whole images (stretched to its size) where it takes images, else seeded
    random feeds of its shapes."""
    if takes_images(m):
        return [{m.inputs[0]["name"]: m.image_input(p)} for p in images[:count]]
    return [m.feeds(seed + i) for i in range(count)]


def bench_images(m: ZooModel, images: list[Path], work: Path) -> list[Path]:
    """The photos a bench calibrates and evaluates ``m`` on: for a text or layout detector (``ocr-det``,
    ``layout``) the same photos with seeded text drawn on them (written under ``work``: its output is ~0 on
    plain photos, see :mod:`zoo.text_overlay`), else ``images`` themselves."""
    if m.kind not in ("ocr-det", "layout"):
        return images
    from .text_overlay import text_images

    return text_images(images, Path(work) / "text-images")
