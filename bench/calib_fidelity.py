"""What the calibration speed-ups change in the quantized zoo models: each calibration mode side by side,
same data, same run, onnxsq's defaults otherwise (``auto`` estimator, report off):

    .venv-ort/bin/python bench/calib_fidelity.py [--models NAME ...] [--calib 9] [--eval 5] [--modes ...]

Modes: ``exact`` — the fed skeleton as it is, every observed value binned (onnxsq before these changes);
``optimized`` — onnxruntime's optimized graph (:mod:`onnxsq.calibration.session`), every value binned;
``sampled`` — the fed skeleton, large tensors binned from a strided subsample
(:mod:`onnxsq.calibration.sampling`); ``default`` — both (what ``quantize`` does now).
Per model: output SQNR against the float model (every output, samples pooled; zoo.measure.fidelity)
and, against ``exact``, how many of the quantized model's initializers differ (shifts, int8 weights,
corrected biases) — 0 means the same model.
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
from zoo.cli_args import crops, samples, takes_images  # noqa: E402
from zoo.measure import fidelity  # noqa: E402

MODES = {"exact": ((), False), "optimized": ((), True), "sampled": (None, False), "default": (None, True)}


def quantize_mode(m, calib: list[dict], mode: str, out: Path) -> dict[str, np.ndarray]:
    """Quantize ``m`` under ``mode``; the quantized model's initializers by name."""
    from onnx import numpy_helper

    from onnxsq.calibration import collect, sampling
    from onnxsq.model_io import save_model
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    strides, optimize = MODES[mode]
    keep = sampling.STRIDES, collect.OPTIMIZE
    sampling.STRIDES, collect.OPTIMIZE = keep[0] if strides is None else strides, optimize
    try:
        q, _ = quantize(m.path, iter(calib), config=QuantizeConfig(report_samples=0))
    finally:
        sampling.STRIDES, collect.OPTIMIZE = keep
    save_model(q, out)
    return {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}


def differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> int:
    names = set(a) | set(b)
    return sum(1 for n in names
               if n not in a or n not in b or a[n].shape != b[n].shape or not np.array_equal(a[n], b[n]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="zoo model names (default: all)")
    ap.add_argument("--calib", type=int, default=9)
    ap.add_argument("--eval", type=int, default=5)
    ap.add_argument("--modes", nargs="*", default=["exact", "optimized", "default"], choices=list(MODES))
    args = ap.parse_args(argv)
    models = [m for m in zoo.ensure(check=False) if not args.models or m.name in set(args.models)]
    images = zoo.images()
    head = ["model", *(f"{k} dB" for k in args.modes), *(f"{k}: inits differing" for k in args.modes[1:])]
    print(f"calibration on {args.calib} samples; `inits differing`: initializers of the quantized model unlike "
          f"`{args.modes[0]}`'s (of all)\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head), flush=True)
    with tempfile.TemporaryDirectory(prefix="onnxsq-calfid-") as tmp:
        for m in models:
            calib = samples(m, images, args.calib)
            feeds = (crops(m, images[args.calib:args.calib + args.eval], per_image=2) if takes_images(m)
                     else [m.feeds(1000 + i) for i in range(args.eval)])
            sq, inits = [], []
            for mode in args.modes:
                out = Path(tmp) / f"{m.name}.{mode}.onnx"
                inits.append(quantize_mode(m, calib, mode, out))
                sq.append(fidelity(m.path, out, feeds)[0])
            diffs = [f"{differing(inits[0], i)}/{len(inits[0])}" for i in inits[1:]]
            print("| " + " | ".join([m.name, *(f"{v:.2f}" for v in sq), *diffs]) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
