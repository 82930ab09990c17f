"""threshold_search on the weight shapes real models hold: 0-d, 1-element, empty, channel counts
of one, every float dtype; pooled thresholds over such arrays. Oracle: the literal definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import SHAPES, float_arrays

from onnxsq.passes.threshold.search import allowed_zeros, pooled_threshold, threshold_array

FRACTIONS = st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0])


def oracle_threshold(a: np.ndarray, f: float, cap: float) -> float:
    """Largest |w| below the cap whose inclusive zero fraction (existing zeros counted) is <= f."""
    if a.size == 0:
        return 0.0
    best = 0.0
    for u in np.unique(a):
        if u < cap and np.count_nonzero(a <= u) <= allowed_zeros(f, a.size):
            best = max(best, float(u))
    return best


@settings(max_examples=150, deadline=None)
@given(float_arrays(SHAPES, magnitude=2.0), FRACTIONS, st.sampled_from([0.2, 10.0]), st.booleans(), st.data())
def test_threshold_array_keeps_shape_dtype_and_the_rule(w, f, ratio, channelwise, data):
    axis = data.draw(st.integers(0, w.ndim - 1)) if w.ndim and channelwise else 0
    new, info = threshold_array(w, f, value_max=10.0, value_maxratio=ratio, channelwise=channelwise,
                                channel_axis=axis)
    assert new.shape == w.shape and new.dtype == w.dtype
    assert info.size == w.size and info.zeros_after == w.size - np.count_nonzero(new)
    changed = new != w
    assert np.all(new[changed] == 0)  # only zeroes, never another value
    a = np.abs(w.astype(np.float64))
    per_row = channelwise and w.ndim
    shape = (a.shape[axis], a.size // max(a.shape[axis], 1)) if per_row else (1, a.size)
    rows = (np.moveaxis(a, axis, 0) if per_row else a).reshape(shape)
    b = np.abs(new.astype(np.float64))
    new_rows = (np.moveaxis(b, axis, 0) if per_row else b).reshape(shape)
    for row, new_row in zip(rows, new_rows):
        cap = min(10.0, ratio * float(row.max(initial=0.0)))
        t = oracle_threshold(row, f, cap)
        np.testing.assert_array_equal(new_row, np.where(row <= t, 0.0, row))


@settings(max_examples=100, deadline=None)
@given(st.lists(float_arrays(SHAPES, magnitude=1.0), min_size=0, max_size=4), FRACTIONS)
def test_pooled_threshold_on_any_shapes(arrays, f):
    caps = [0.5 * float(np.max(np.abs(a.astype(np.float64)), initial=0.0)) for a in arrays]
    t = pooled_threshold(arrays, caps, f)
    if not arrays or not sum(a.size for a in arrays):
        assert t == 0.0
        return
    zeroed = sum(int(np.count_nonzero((np.abs(a.astype(np.float64)) <= t) & (np.abs(a.astype(np.float64)) < c)
                                      | (a == 0))) for a, c in zip(arrays, caps))
    existing = sum(int(np.count_nonzero(a == 0)) for a in arrays)  # already sparser: left as it is
    assert zeroed <= max(allowed_zeros(f, sum(a.size for a in arrays)), existing)


def test_zero_d_weight_stays_zero_d():
    new, info = threshold_array(np.array(0.01, np.float32), 0.5)
    assert new.shape == () and info.size == 1
