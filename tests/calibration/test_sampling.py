"""Large tensors' histograms from a strided in-graph subsample; exact count/min/max; shards still merge
bit for bit; the optimized calibration session gives the fed skeleton's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxsq.calibration import collect, sampling
from onnxsq.calibration.collect import collect_stats, run_observed
from onnxsq.calibration.stats import BINS, TensorStats
from tests.builders import build_conv_model

NAMES = ["conv_out", "output"]  # a signed tensor and a ReLU output, 4 x 128 x 128 per sample


@pytest.fixture
def big():
    return build_conv_model(cin=4, cout=4, hw=128, bn=False, relu=True)


def _batches(count=5, bs=2, seed=0):
    rng = np.random.default_rng(seed)
    return [({"input": rng.standard_normal((bs, 4, 128, 128)).astype(np.float32)}, bs, i) for i in range(count)]


@pytest.mark.parametrize("dims, stride", [
    (["N", 64, 112, 112], 5), ([1, 4, 128, 128], 3), ([None, 13, 200, 200], 3), ([1, 4, 32, 32], 1),
    ([None, 4, None, 128], 1), ([None], 1), ([], 1), ([1, 3, 105, 105], 1), ([1, 3, 256, 256], 5),
    ([1, 3 * 5 * 7 * 11 * 13], 1),
])
def test_stride_is_a_prime_dividing_no_dimension(dims, stride):
    dims = [d if isinstance(d, int) else None for d in dims]
    got = sampling.stride_for(dims)
    assert got == stride
    if got > 1:
        assert all(d % got for d in dims if d) and math.prod(dims[1:]) >= sampling.MIN_BINNED * got


def test_update_sampled_bins_the_subsample_at_the_exact_range():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(100_003) * 3).astype(np.float32)
    x[::17] = 0
    sample = x[::7]
    st = TensorStats(histogram=True)
    st.update_sampled(x.size, float(x.min()), float(x.max()), sample, 0)
    assert (st.count, st.min, st.max) == (x.size, float(x.min()), float(x.max()))
    assert st.zeros == int(np.sum(sample == 0))
    exp = math.frexp(max(-float(x.min()), float(x.max())))[1]
    idx = np.floor(np.abs(sample.astype(np.float64)) * BINS / 2.0**exp).astype(int)  # float64 oracle
    assert st.hist_exp == exp
    assert np.array_equal(st.hist_pos, np.bincount(idx[sample >= 0], minlength=BINS))
    assert np.array_equal(st.hist_neg, np.bincount(idx[sample < 0], minlength=BINS))
    assert st.clipped_fraction(-1.0, 1.0) == pytest.approx(np.mean(np.abs(sample) >= 1.0))


def test_collect_bins_a_strided_subsample_with_exact_min_max(big):
    assert sampling.sample_strides(big, NAMES) == {"conv_out": 3, "output": 3}
    got, _, seen = collect_stats(big, NAMES, _batches(), histogram=True)
    assert seen == 10
    oracle = {n: TensorStats(histogram=True) for n in NAMES}
    for (_, values, _), (_, _, pos) in zip(run_observed(big, NAMES, _batches(), optimize=True), _batches()):
        for n, v in zip(NAMES, values):
            lo = 0.0 if n == "output" else float(v.min())  # a ReLU output's minimum is recorded as 0
            oracle[n].update_sampled(v.size, lo, float(v.max()), v.ravel()[::3], pos)
    for n in NAMES:
        assert got[n].to_dict() == oracle[n].to_dict(), n
    assert got["conv_out"].hist_neg.sum() + got["conv_out"].hist_pos.sum() == math.ceil(2 * 4 * 128 * 128 / 3) * 5


def test_sampled_shards_merge_to_one_pass_bit_for_bit(big):
    one, _, _ = collect_stats(big, NAMES, _batches(), histogram=True)
    parts = [collect_stats(big, NAMES, [b for b in _batches() if b[2] in units], histogram=True)[0]
             for units in ({3, 4}, {0}, {1, 2})]
    for n in NAMES:
        merged = parts[1][n].merge(parts[2][n]).merge(parts[0][n])
        assert merged.to_dict() == one[n].to_dict(), n


def test_optimized_session_matches_the_fed_skeleton(big, monkeypatch):
    opt, _, _ = collect_stats(big, NAMES, _batches(), histogram=False)
    monkeypatch.setattr(collect, "OPTIMIZE", False)
    fed, _, _ = collect_stats(big, NAMES, _batches(), histogram=False)
    for n in NAMES:
        assert opt[n].count == fed[n].count
        assert opt[n].min == pytest.approx(fed[n].min, rel=1e-5) and opt[n].max == pytest.approx(fed[n].max, rel=1e-5)


def test_whole_when_strides_are_off(big, monkeypatch):
    monkeypatch.setattr(sampling, "STRIDES", ())
    got, _, _ = collect_stats(big, NAMES, _batches(2), histogram=True)
    assert got["output"].hist_pos.sum() == got["output"].count == 2 * 2 * 4 * 128 * 128
