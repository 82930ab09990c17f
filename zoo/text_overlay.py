"""Photos with text drawn on them, for the zoo's text detectors (``kind == "ocr-det"``).

A text detector's output is a probability map that is ~0 wherever there is no text, so on the zoo's plain
photos its output carries no signal and a fidelity figure measured there is noise (ppocrv4_det: 0 or
below 2e-6 everywhere). :func:`with_text` draws a few seeded lines of words in Pillow's bundled font
(FreeType, Pillow >= 10.1) on each photo, dark on a light band or light or dark on the photo, at sizes
and positions from a seeded generator; the same photo and seed give the same pixels. :func:`text_images`
writes them into a folder (the calibration and evaluation images the benches hand to ``--calib`` and to
the crops).
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("invoice", "TOTAL", "2026-12-01", "Apple", "No. 4721", "receipt", "Straße", "quantized", "model",
         "PP-OCR", "ONNX", "€ 12.50", "page 3", "Hello", "power of two", "shift", "int8", "BATCH", "road",
         "coffee", "ticket", "EXIT", "open 9-17", "Tel. 555-0199")


def with_text(photo: str | Path, seed: int):
    """``photo`` (RGB) with 3-6 seeded lines of words drawn on it: a PIL image of the photo's size."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    with Image.open(photo) as src:
        img = src.convert("RGB")
    w, h = img.size
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        size = int(max(10, min(h, w) * rng.uniform(0.05, 0.12)))
        font = ImageFont.load_default(size=size)
        text = " ".join(str(rng.choice(WORDS)) for _ in range(int(rng.integers(1, 4))))
        x0, y0 = int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - size - 1)))
        box = draw.textbbox((x0, y0), text, font=font)
        if rng.random() < 0.5:  # dark text on a light band (a label, a page)
            draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=tuple(rng.integers(200, 256, 3)))
            draw.text((x0, y0), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
        else:  # light or dark text straight on the photo
            shade = int(rng.choice([20, 235]))
            draw.text((x0, y0), text, font=font, fill=(shade, shade, shade))
    return img


def text_images(photos: list[Path], out_dir: str | Path, seed: int = 0) -> list[Path]:
    """:func:`with_text` of each photo, written as PNG into ``out_dir`` under the photo's name (photo ``i``
    takes seed ``seed + i``); returns the paths in the photos' order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, photo in enumerate(photos):
        path = out_dir / (Path(photo).stem + ".png")
        with_text(photo, seed + i).save(path)
        paths.append(path)
    return paths
