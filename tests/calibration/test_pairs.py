"""onnxsq.calibration.pairs: the probe that asks onnxruntime whether its u8 x s8 pairs saturate."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxsq.calibration import pairs

ort = pytest.importorskip("onnxruntime")
X = np.full((1, pairs.K, 1, 1), 255.0, np.float32)


def _code(precise: bool) -> int:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if precise:  # onnxruntime's exact u8 x u8 kernels on x86 (int32 accumulation everywhere)
        so.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(pairs.probe_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    return int(round(float(sess.run(None, {"x": X})[0].reshape(-1)[0]) / 2.0**pairs.OUT_SHIFT))


def _saturating_code() -> int:
    """The numpy oracle of vpmaddubsw: adjacent u8 x s8 products summed and clipped to int16, then int32."""
    prod = (np.full(pairs.K, 255, np.int64) * np.full(pairs.K, 127, np.int64)).reshape(-1, 2).sum(axis=1)
    total = np.clip(prod, -(2**15), 2**15 - 1).sum()
    return int(np.clip(np.rint(total / 2.0**pairs.OUT_SHIFT), -128, 127))


def test_probe_is_a_valid_model_that_tells_the_two_arithmetics_apart():
    onnx.checker.check_model(pairs.probe_model(), full_check=True)
    assert pairs.exact_code() == 63
    assert _saturating_code() == 32 != pairs.exact_code()


def test_the_exact_session_gives_the_exact_code_and_the_answer_matches_the_default_session():
    assert _code(precise=True) == pairs.exact_code()
    assert pairs.pairs_saturate() is (_code(precise=False) != pairs.exact_code())
    if pairs.pairs_saturate():
        assert _code(precise=False) == _saturating_code()
