"""Streaming statistics: merging shards equals one pass; estimators land on sensible power-of-two shifts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxsq.calibration import pow2
from onnxsq.calibration.stats import TensorStats, choose_shift, estimate_range, mse_shift


def _batches(seed: int, n: int, scale_growth: bool = True) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(0, 1 + (3 * i if scale_growth else 0), (2, 3, 5)).astype(np.float32)
        x[rng.random(x.shape) < 0.2] = 0.0
        out.append(x)
    return out


def _run(batches, histogram=True) -> TensorStats:
    s = TensorStats(histogram=histogram)
    for b in batches:
        s.update(b)
    return s


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 9), st.data())
def test_merged_shards_equal_one_pass(seed, n, data):
    batches = _batches(seed, n)
    cut = data.draw(st.integers(1, n - 1))
    one = _run(batches)
    merged = _run(batches[:cut]).merge(_run(batches[cut:]))
    # order-free statistics: exactly equal
    for k in ("count", "zeros", "min", "max", "batches", "hist_exp", "first_min", "first_max"):
        assert getattr(merged, k) == getattr(one, k), k
    np.testing.assert_array_equal(merged.hist_pos, one.hist_pos)
    np.testing.assert_array_equal(merged.hist_neg, one.hist_neg)
    # the moving average merges in order, equal up to float rounding
    assert merged.ema_min == pytest.approx(one.ema_min, rel=1e-12, abs=1e-12)
    assert merged.ema_max == pytest.approx(one.ema_max, rel=1e-12, abs=1e-12)
    for method in ("minmax", "percentile", "mse"):
        assert choose_shift(merged, method, 8) == choose_shift(one, method, 8)


def test_three_way_merge_and_serialisation():
    batches = _batches(3, 6)
    parts = [_run(batches[:2]), _run(batches[2:3]), _run(batches[3:])]
    merged = parts[0].merge(parts[1]).merge(TensorStats.from_dict(parts[2].to_dict()))
    one = _run(batches)
    assert merged.to_dict()["hist_pos"] == one.to_dict()["hist_pos"]
    assert merged.ema_max == pytest.approx(one.ema_max, rel=1e-12)
    assert TensorStats(histogram=True).merge(one).to_dict() == one.to_dict()


def test_ema_is_the_originals_moving_average_with_expansion():
    s = _run([np.array([0.0, 1.0]), np.array([0.0, 3.0]), np.array([-1.0, 2.0])], histogram=False)
    r = 1.0
    for b in (3.0, 2.0):
        r = 0.99 * r + 0.01 * b
    assert s.ema_max == pytest.approx(r)
    lo, hi = estimate_range(s, "ema")
    assert hi == pytest.approx(1.25 * r) and lo < 0


def test_percentile_clips_outliers_and_minmax_holds_everything():
    x = np.concatenate([np.random.default_rng(0).uniform(0, 1, 100_000), [50.0]]).astype(np.float32)
    s = _run([x])
    assert estimate_range(s, "minmax") == (s.min, 50.0)
    lo, hi = estimate_range(s, "percentile", percentile=99.9)
    assert lo == s.min and 0.99 <= hi <= 1.02
    shift, signed = choose_shift(s, "percentile", 8, percentile=99.9)
    assert not signed and shift > choose_shift(s, "minmax", 8)[0]


def test_mse_prefers_clipping_a_rare_outlier_but_not_a_real_tail():
    rng = np.random.default_rng(1)
    body = rng.normal(0, 1, 200_000).astype(np.float32)
    s = _run([np.concatenate([body, [40.0]]).astype(np.float32)])
    base = pow2.fit_shift(s.min, s.max, 8, True)
    assert mse_shift(s, 8, True) > base  # one outlier: finer steps win
    # a uniform body that fills the fitted range: nothing to gain from clipping it
    uniform = _run([rng.uniform(-0.9, 0.9, 100_000).astype(np.float32)])
    assert mse_shift(uniform, 8, True) == pow2.fit_shift(uniform.min, uniform.max, 8, True)


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="inf or nan"):
        TensorStats().update(np.array([1.0, np.nan]))


def test_channel_mean_equals_numpy_and_merges():
    from onnxsq.calibration.stats import ChannelMean

    rng = np.random.default_rng(5)
    batches = [rng.normal(i, 1.0, (2, 3, 4, 5)).astype(np.float32) for i in range(4)]
    one, a, b = ChannelMean(1, 4), ChannelMean(1, 4), ChannelMean(1, 4)
    for i, x in enumerate(batches):
        one.update(x)
        (a if i < 2 else b).update(x)
    want = np.concatenate(batches).astype(np.float64).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(one.mean, want, rtol=1e-12)
    np.testing.assert_allclose(a.merge(b).mean, want, rtol=1e-12)
    assert ChannelMean(1, 4).mean is None
    with pytest.raises(ValueError, match="rank"):
        one.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="channels"):
        one.update(np.zeros((1, 4, 1, 1)))


def test_clipped_fraction_from_min_max_and_histogram():
    x = np.concatenate([np.linspace(0, 1, 1000), [3.0, 3.5]]).astype(np.float32)
    s, h = _run([x], histogram=False), _run([x], histogram=True)
    assert s.clipped_fraction(-4.0, 4.0) == 0.0 == h.clipped_fraction(-4.0, 4.0)  # min/max fit: nothing
    assert s.clipped_fraction(-1.0, 2.0) is None  # min/max alone cannot count
    # an 8-bit unsigned shift of 7: the limit (255 + 0.5) / 128 is a bin edge, the count is exact
    hi = (255 + 0.5) * 2.0**-7
    assert h.clipped_fraction(-0.5 * 2.0**-7, hi) == np.count_nonzero(x > hi) / x.size == 2 / 1002
    neg = _run([-x], histogram=True)
    assert neg.clipped_fraction(-hi, 0.5) == 2 / 1002


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("signed", [True, False])
def test_histogram_bins_equal_a_float64_oracle_at_exact_edges(dtype, signed):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(3000) * 5
    x = x if signed else np.abs(x)
    x[:300] = 0.0
    x[300:400] = -0.0
    exp = 3  # every |x| < 8 below, bins of 2**-8
    x = np.clip(x, -7.99, 7.99)
    k = rng.integers(0, 2048, 500)  # values exactly on bin edges
    x[400:900] = (np.where(rng.random(500) < 0.5, -1.0, 1.0) if signed else 1.0) * k * 2.0 ** (exp - 11)
    x = x.astype(dtype)
    s = TensorStats(histogram=True)
    s.update(x)
    assert s.hist_exp == exp
    mags = np.abs(x.astype(np.float64))
    bins = np.floor(mags * 2.0 ** (11 - exp)).astype(int)
    pos = np.bincount(bins[x >= 0], minlength=2048)  # -0.0 >= 0: an exact zero, counted as positive
    neg = np.bincount(bins[x < 0], minlength=2048)
    np.testing.assert_array_equal(s.hist_pos, pos)
    np.testing.assert_array_equal(s.hist_neg, neg)
    assert s.zeros == 400
