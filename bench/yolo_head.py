"""A decoded YOLO head's two parts measured apart: box rows and class-score rows of ``output0``
([1, 4 + classes, anchors]), onnxsq's configurations beside onnxruntime's ``quantize_static``, same data:

    .venv-ort/bin/python bench/yolo_head.py [--models yolov8n_doclaynet] [--calib 9] [--eval 17] [--crops 4]

The pooled output SQNR of ``bench/fidelity.py`` is all boxes (pixel values up to the input size): a
quantized model whose every class score is 0 still scores ~29 dB there. This prints each part's SQNR
(signal and noise summed over every crop) and the largest score of any anchor, float against quantized.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from zoo.cli_args import bench_images, crops, samples  # noqa: E402


def parts(float_path: Path, q_path: Path, feeds: list[dict]) -> tuple[float, float, float, float]:
    """(box SQNR, score SQNR, largest float score, largest quantized score) over ``feeds``."""
    from onnxsq.runtime import make_session

    f, q = make_session(str(float_path), optimize=True), make_session(str(q_path), optimize=True)
    acc = np.zeros((2, 2))
    top = [0.0, 0.0]
    for feed in feeds:
        a, b = np.asarray(f.run(None, feed)[0][0], np.float64), np.asarray(q.run(None, feed)[0][0], np.float64)
        for i, rows in enumerate((slice(0, 4), slice(4, None))):
            acc[i] += (np.sum(a[rows] ** 2), np.sum((a[rows] - b[rows]) ** 2))
        top = [max(top[0], float(a[4:].max())), max(top[1], float(b[4:].max()))]
    db = [10 * np.log10(s / n) if n > 0 else float("inf") for s, n in acc]
    return db[0], db[1], top[0], top[1]


def ort_variants(m, calib: list[dict], work: Path) -> dict[str, Path]:
    """quantize_static (QDQ, MinMax) per tensor and per channel, the models that it writes."""
    from onnxsq.runtime import make_session
    from zoo.measure import ort_quantize

    out = {}
    for per_channel in (False, True):
        path = work / f"ort.{int(per_channel)}.onnx"
        try:
            ort_quantize(m.path, path, calib, per_channel)
            make_session(str(path))  # per channel on opset 12 writes a model onnxruntime refuses to load
            out[f"ORT {'per-channel' if per_channel else 'per-tensor'}"] = path
        except Exception:  # noqa: BLE001 - an opset-12 model refuses per-channel: a missing row
            continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["yolov8n_doclaynet"])
    ap.add_argument("--calib", type=int, default=9)
    ap.add_argument("--eval", type=int, default=17)
    ap.add_argument("--crops", type=int, default=4)
    args = ap.parse_args()
    from onnxsq.model_io import save_model
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    print("| model | quantizer | box rows dB | score rows dB | largest score, float / quantized |")
    print("|---|---|---|---|---|")
    for m in (z for z in zoo.ensure(check=False) if z.name in args.models):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            imgs = bench_images(m, zoo.images()[:args.calib + args.eval], work)
            calib = samples(m, imgs, args.calib)
            feeds = crops(m, imgs[args.calib:args.calib + args.eval], per_image=args.crops)
            models = {}
            for effort in ("fast", "default"):
                q, _ = quantize(m.path, iter(calib), config=QuantizeConfig(effort=effort))
                models[f"onnxsq {effort}"] = work / f"{effort}.onnx"
                save_model(q, models[f"onnxsq {effort}"])
            models.update(ort_variants(m, calib, work))
            for name, path in models.items():
                box, score, top_f, top_q = parts(m.path, path, feeds)
                print(f"| {m.name} | {name} | {box:.1f} | {score:.1f} | {top_f:.3f} / {top_q:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
