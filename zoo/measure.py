"""Fidelity of a quantized zoo model against its float model, and onnxruntime's ``quantize_static`` at its
best on the same data: shared by ``bench/zoo.py`` and ``bench/fidelity.py``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from . import ZooModel


def fidelity(float_path: Path, q_path: Path, feeds: list[dict], per_sample: list[float] | None = None
             ) -> tuple[float, float]:
    """Output SQNR (dB) and top-1 agreement (%) of ``q_path`` against ``float_path`` over ``feeds``; with
    ``per_sample`` (a list) each sample's own output SQNR is appended to it (nan where its float outputs carry
    no signal): its median is the issue's protocol, which a few crops near a decision flip move less.

    The SQNR pools every sample (signal and noise energy summed over all of them): a detector's output
    is all zeros on a photo without text or faces, which makes a per-sample SQNR -inf or undefined.
    Where the float outputs carry no signal at all (mean square below 1e-12: ppocrv4_det's probability
    map on photos is 0 or below 2e-6 everywhere) the SQNR is nan, not a figure; top-1 counts only rows
    whose float values are not all equal (an all-zero row has no top-1)."""
    from onnxsq.runtime import make_session

    f_sess, q_sess = make_session(str(float_path), optimize=True), make_session(str(q_path), optimize=True)
    signal = noise = 0.0
    agree = total = count = 0
    for feed in feeds:
        fo, qo = f_sess.run(None, feed), q_sess.run(None, feed)
        ref = np.concatenate([np.asarray(o, np.float64).ravel() for o in fo])
        got = np.concatenate([np.asarray(o, np.float64).ravel() for o in qo])
        s, n = float(np.sum(ref**2)), float(np.sum((ref - got) ** 2))
        signal, noise = signal + s, noise + n
        if per_sample is not None:
            per_sample.append(float("nan") if s <= 1e-12 * max(ref.size, 1) else
                              float("inf") if n == 0 else float(10 * np.log10(s / n)))
        count += ref.size
        a, b = np.asarray(fo[0]), np.asarray(qo[0])
        if a.ndim and a.shape[-1] > 1:
            ranked = a.max(-1) > a.min(-1)
            agree += int(np.sum((a.argmax(-1) == b.argmax(-1)) & ranked))
            total += int(np.sum(ranked))
    if signal <= 1e-12 * max(count, 1):
        return float("nan"), (100.0 * agree / total if total else float("nan"))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    return sqnr, (100.0 * agree / total if total else float("nan"))


def median_db(per_sample: list[float]) -> float:
    """The median of per-sample SQNRs (dB), the samples without signal (nan) left out; nan where none has one."""
    v = np.asarray([x for x in per_sample if not np.isnan(x)], np.float64)
    return float(np.median(v)) if v.size else float("nan")


def ort_quantize(src: Path, out: Path, calib: list[dict], per_channel: bool) -> None:
    """onnxruntime's ``quantize_static`` (QDQ, MinMax) of ``src`` on ``calib`` into ``out``, its output
    silenced; raises what it raises."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel)


def ort_best(m: ZooModel, calib: list[dict], feeds: list[dict], work: Path, medians: dict[str, float] | None = None
             ) -> tuple[float, float, str]:
    """quantize_static at its best over pre-processing x per-channel: (SQNR, agreement, variant); ``medians``
    (a dict) takes each variant's median per-sample SQNR."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    best = (-float("inf"), float("nan"), "failed")
    for pre in (False, True):
        src = m.path
        if pre:
            src = work / "ort.pre.onnx"
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    quant_pre_process(str(m.path), str(src), skip_symbolic_shape=False)
            except Exception:  # noqa: BLE001 - symbolic shape inference refuses some models
                try:
                    quant_pre_process(str(m.path), str(src), skip_symbolic_shape=True)
                except Exception:  # noqa: BLE001
                    continue
        for per_channel in (False, True):
            out = work / f"ort.{int(pre)}{int(per_channel)}.onnx"
            try:
                ort_quantize(src, out, calib, per_channel)
                per: list[float] = []
                sq, ag = fidelity(m.path, out, feeds, per)
            except Exception:  # noqa: BLE001 - record what runs; a failure is a missing variant
                continue
            name = f"{'pre+' if pre else ''}{'per-channel' if per_channel else 'per-tensor'}"
            if medians is not None:
                medians[name] = median_db(per)
            if sq > best[0]:
                best = (sq, ag, name)
    return best


