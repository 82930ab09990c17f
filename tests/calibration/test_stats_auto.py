"""The ``auto`` estimator: shift and signedness of least expected squared error on the histogram,
checked against the error measured by quantizing the data itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxsq.calibration import pow2
from onnxsq.calibration.stats import TensorStats, choose_shift, mse_errors, mse_format, mse_shift


def _stats(x: np.ndarray) -> TensorStats:
    s = TensorStats(histogram=True)
    s.update(np.asarray(x, np.float32))
    return s


def _measured(x: np.ndarray, shift: int, signed: bool, bits: int = 8) -> float:
    x64 = x.astype(np.float64)
    return float(np.sum((x64 - pow2.fake_quantize(x64, shift, bits, signed)) ** 2))


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3, 0, 6) / 6


def test_rare_small_negatives_take_an_unsigned_format():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0, 3, 200_000))
    x[rng.random(x.size) < 0.02] = -0.05  # 2% of the values, each far below one signed step
    shift, signed = mse_format(_stats(x), 8)
    assert not signed
    assert _measured(x, shift, False) < _measured(x, mse_shift(_stats(x), 8, True), True)
    assert choose_shift(_stats(x), "auto", 8) == (shift, False)
    assert choose_shift(_stats(x), "mse", 8)[1] is True  # mse keeps the sign whenever there are negatives


def test_hardswish_of_centred_inputs_keeps_its_sign():
    """Half of HardSwish(N(0, 2.5)) is negative, down to -3/8: clipping it costs more than a bit."""
    x = _hardswish(np.random.default_rng(0).normal(0, 2.5, 200_000))
    shift, signed = mse_format(_stats(x), 8)
    assert signed and _measured(x, shift, True) < _measured(x, mse_shift(_stats(x), 8, False), False)


def test_symmetric_data_stays_signed_and_never_negative_is_unsigned():
    rng = np.random.default_rng(1)
    assert mse_format(_stats(rng.normal(0, 1, 50_000)), 8)[1] is True
    assert mse_format(_stats(np.abs(rng.normal(0, 1, 50_000))), 8)[1] is False
    assert choose_shift(_stats(rng.normal(0, 1, 1000)), "auto", 8, signed=False)[1] is False  # a forced format


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.5), st.sampled_from([4, 8]))
def test_the_chosen_format_is_the_best_measured_one_up_to_binning(seed, neg_share, bits):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_t(4, 20_000))
    x[rng.random(x.size) < neg_share] *= -0.3  # a tail of small negatives, of any share
    stats = _stats(x)
    shift, signed = mse_format(stats, bits)
    best = min(_measured(x, s, sg, bits) for sg in (True, False) for s, _ in mse_errors(stats, bits, sg))
    # the histogram's model of the error is close to the error itself (bins are 1/2048 of the range)
    assert _measured(x, shift, signed, bits) <= best * 1.25 + 1e-12


def test_auto_needs_a_histogram():
    with pytest.raises(ValueError, match="histogram"):
        mse_errors(TensorStats(histogram=False), 8, True)
