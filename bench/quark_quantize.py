"""Quantize one model with AMD Quark's power-of-two configurations, for ``bench/fidelity.py --quark-python``.

Runs in its own environment (Quark pins onnx <= 1.22 and needs torch; it never shares one with onnxsq):

    python3 -m venv .venv-quark
    .venv-quark/bin/pip install torch==2.13.0 amd-quark==0.13 onnxruntime 'onnx<=1.22'
    .venv-quark/bin/python bench/quark_quantize.py MODEL.onnx CALIB.npz OUT.onnx [--config XINT8]

``CALIB.npz``: the calibration feeds as ``{i}/{input name}`` arrays (one sample each, in order).
``--config``: XINT8 (power-of-two MinMSE, symmetric int8 activations and weights) or XINT8_ADAROUND
(the same plus AdaRound weight rounding on the calibration data). Prints the seconds it took.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument("--config", default="XINT8", choices=("XINT8", "XINT8_ADAROUND"))
    args = ap.parse_args(argv)
    import quark.onnx as qo
    from onnxruntime.quantization import CalibrationDataReader

    data = np.load(args.calib)
    samples: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, _, name = key.partition("/")
        samples.setdefault(int(i), {})[name] = data[key]
    feeds = [samples[i] for i in sorted(samples)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(feeds)

    config = getattr(qo, f"{args.config}_QCONFIG")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        qo.ModelQuantizer(config).quantize_model(args.model, args.out, calibration_data_reader=Reader())
    print(f"{time.perf_counter() - t0:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
