"""threshold_search: numpy oracles for both searches, and the properties the issue asks for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxsq.passes.threshold.search import (
    allowed_zeros,
    pooled_threshold,
    threshold_array,
    threshold_rows,
)

# --- oracles: written the slow, literal way ---------------------------------------------------


def frac(a: np.ndarray, t: float) -> float:
    return np.count_nonzero(a <= np.float64(t)) / a.size


def oracle_exact(w: np.ndarray, f: float, value_max: float, value_maxratio: float) -> float:
    """The largest weight magnitude u below the cap whose inclusive zero fraction is <= f (else 0)."""
    a = np.abs(w).astype(np.float64)
    cap = min(value_max, value_maxratio * a.max())
    best = 0.0
    for u in np.unique(a):
        if u < cap and frac(a, u) <= f:
            best = max(best, float(u))
    return best


def oracle_grid(w: np.ndarray, f: float, value_max: float, value_maxratio: float, step_factor: float) -> float:
    """The original's two loops: coarse steps of 100*step, then fine steps from the coarse pick."""
    a = np.abs(w).astype(np.float64)
    mx = a.max()
    step = mx * step_factor
    cap = min(value_max, value_maxratio * mx)
    if step == 0:
        return 0.0
    coarse, k, sel = 100 * step, 0, 0.0
    while k * coarse < cap and frac(a, k * coarse) <= f:
        sel = k * coarse
        k += 1
    base, out = sel, sel
    for j in range(100):
        t = base + j * step
        if not (t < cap and frac(a, t) <= f):
            break
        out = t
    return out if (out < cap and frac(a, out) <= f) else 0.0


def apply(w: np.ndarray, t: float) -> np.ndarray:
    return np.where((np.abs(w) <= np.float64(t)) & (w != 0), np.zeros((), w.dtype), w)


# --- strategies -----------------------------------------------------------------------------

TIES = st.sampled_from([0.0, -0.0, 0.0625, -0.0625, 0.125, 0.25, -0.25, 0.5, 1.0])  # exact in float32
VALUES = st.one_of(st.floats(-1, 1, width=32), TIES)
ARRAYS = hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 40)), elements=VALUES)
FRACTIONS = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.4, 0.5, 0.8, 0.9, 1.0]))
CAPS = st.one_of(st.floats(0, 2), st.sampled_from([0.0, 0.2, 10.0]))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rows_of(w: np.ndarray, channelwise: bool) -> list[np.ndarray]:
    return list(w) if channelwise else [w.reshape(-1)]


# --- oracle agreement -----------------------------------------------------------------------


@SETTINGS
@given(ARRAYS, FRACTIONS, CAPS, st.floats(0, 1.5), st.booleans())
def test_exact_matches_oracle(w, f, vmax, vratio, channelwise):
    new, info = threshold_array(w, f, value_max=vmax, value_maxratio=vratio, channelwise=channelwise)
    expect = [apply(r, oracle_exact(r, f, vmax, vratio)) for r in rows_of(w, channelwise)]
    assert np.array_equal(new.reshape(len(expect), -1), np.stack(expect))
    assert np.allclose(info.threshold_exact, [oracle_exact(r, f, vmax, vratio) for r in rows_of(w, channelwise)])


@SETTINGS
@given(ARRAYS, FRACTIONS, CAPS, st.floats(0, 1.5), st.sampled_from([1e-4, 1e-3, 3e-3, 0.01, 0.05]), st.booleans())
def test_grid_matches_oracle(w, f, vmax, vratio, step_factor, channelwise):
    new, info = threshold_array(w, f, value_max=vmax, value_maxratio=vratio, search="grid",
                                step_factor=step_factor, channelwise=channelwise)
    ts = [oracle_grid(r, f, vmax, vratio, step_factor) for r in rows_of(w, channelwise)]
    np.testing.assert_allclose(info.threshold_grid, ts, rtol=0, atol=1e-12)
    assert np.array_equal(
        new.reshape(len(ts), -1), np.stack([apply(r, t) for r, t in zip(rows_of(w, channelwise), ts)])
    )


def test_grid_with_the_manuals_step_factor():
    w = np.random.default_rng(1).standard_normal(3000).astype(np.float32) * 0.05
    for f in (0.4, 0.8):
        new, info = threshold_array(w, f, search="grid", step_factor=1e-6)
        t = oracle_grid(w, f, 0.2, 0.2, 1e-6)
        assert info.threshold_grid[0] == pytest.approx(t, abs=1e-12)
        assert np.array_equal(new, apply(w, t))
        # the exact search zeroes at least as much, never more than the fraction
        assert np.count_nonzero(new == 0) <= np.count_nonzero(threshold_array(w, f)[0] == 0) <= f * w.size


def test_known_values():
    w = np.array([0.1, -0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, -1.0], np.float32)
    new, info = threshold_array(w, 0.5, value_max=10, value_maxratio=10)
    assert info.threshold_exact[0] == pytest.approx(0.5)
    assert np.count_nonzero(new == 0) == 5 and new[5] == np.float32(0.6)
    # the cap (0.2 * max|w| = 0.2) stops it: weights at or above the cap survive
    new, info = threshold_array(w, 0.5, value_max=10, value_maxratio=0.2)
    assert info.cap[0] == pytest.approx(0.2) and np.count_nonzero(new == 0) == 1


def test_ties_never_exceed_the_fraction():
    w = np.array([0.1] * 6 + [0.5] * 4, np.float32)
    new, info = threshold_array(w, 0.5, value_max=1, value_maxratio=1)  # 6 tied weights > 50%
    assert np.array_equal(new, w) and info.zeros_after == 0
    new, _ = threshold_array(w, 0.6, value_max=1, value_maxratio=1)
    assert np.count_nonzero(new == 0) == 6


def test_already_sparser_than_target_is_left_alone():
    w = np.array([0, 0, 0, 0.3, 0.4], np.float32)
    new, info = threshold_array(w, 0.2, value_max=1, value_maxratio=1)
    assert np.array_equal(new, w) and info.zeros_before == info.zeros_after == 3


def test_all_zero_and_float16_and_float64():
    z = np.zeros((4, 8), np.float32)
    for search in ("exact", "grid"):
        assert np.array_equal(threshold_array(z, 0.9, search=search)[0], z)
    for dtype in (np.float16, np.float64):
        w = (np.random.default_rng(0).standard_normal((8, 16)) * 0.1).astype(dtype)
        new, info = threshold_array(w, 0.5, channelwise=True)
        assert new.dtype == dtype and new.shape == w.shape and info.zeros_after > 0


def test_channel_axis():
    w = np.random.default_rng(2).standard_normal((5, 7)).astype(np.float32)
    a, _ = threshold_array(w, 0.5, channelwise=True, channel_axis=1, value_max=9, value_maxratio=9)
    b, _ = threshold_array(w.T, 0.5, channelwise=True, channel_axis=0, value_max=9, value_maxratio=9)
    assert np.array_equal(a, b.T)
    assert all(np.count_nonzero(a[:, c] == 0) == 2 for c in range(7))  # floor(0.5 * 5)


def test_rejects_integer_arrays_and_unknown_search():
    with pytest.raises(TypeError):
        threshold_array(np.ones(4, np.int8), 0.5)
    with pytest.raises(ValueError):
        threshold_rows(np.ones((1, 4), np.float32), 0.5, value_max=1, value_maxratio=1, search="coarse")


def test_allowed_zeros_uses_the_same_float_test():
    for n in (1, 7, 10, 100, 12345):
        for f in (0.0, 0.07, 0.3, 0.57, 0.8, 1.0):
            k = allowed_zeros(f, n)
            assert k / n <= f and (k == n or (k + 1) / n > f)


# --- properties -----------------------------------------------------------------------------


@SETTINGS
@given(ARRAYS, FRACTIONS, CAPS, st.floats(0, 1.5), st.sampled_from(["exact", "grid"]), st.booleans())
def test_properties(w, f, vmax, vratio, search, channelwise):
    kw = dict(value_max=vmax, value_maxratio=vratio, search=search, channelwise=channelwise, step_factor=1e-3)
    before = w.copy()
    new, info = threshold_array(w, f, **kw)
    assert np.array_equal(w, before, equal_nan=True)  # input untouched
    assert new.dtype == w.dtype and new.shape == w.shape
    for r_old, r_new, cap in zip(rows_of(w, channelwise), rows_of(new, channelwise), info.cap):
        zb, za = np.count_nonzero(r_old == 0), np.count_nonzero(r_new == 0)
        assert za == zb or za / r_old.size <= f  # the fraction is never exceeded
        killed = (r_new == 0) & (r_old != 0)
        assert np.all(np.abs(r_old[killed]).astype(np.float64) < cap)  # nothing at or above the cap
        assert np.array_equal(r_new[~killed], r_old[~killed])  # others kept
    again, _ = threshold_array(new, f, **kw)
    assert np.array_equal(again.view(np.uint32), new.view(np.uint32))  # idempotent, bit for bit
    zero, _ = threshold_array(w, 0.0, **kw)
    assert np.array_equal(zero.view(np.uint32), w.view(np.uint32))  # fraction 0 changes nothing
    if search == "grid":
        exact, _ = threshold_array(w, f, **{**kw, "search": "exact"})
        assert np.all((new == 0) <= (exact == 0))  # the grid never zeroes more than exact


@SETTINGS
@given(ARRAYS, FRACTIONS, FRACTIONS, st.sampled_from(["exact", "grid"]), st.booleans())
def test_monotone_in_the_fraction(w, f1, f2, search, channelwise):
    lo, hi = sorted((f1, f2))
    kw = dict(value_max=0.5, value_maxratio=0.8, search=search, channelwise=channelwise, step_factor=1e-3)
    a, _ = threshold_array(w, lo, **kw)
    b, _ = threshold_array(w, hi, **kw)
    assert np.all((a == 0) <= (b == 0))


# --- pooled (global) threshold --------------------------------------------------------------


@SETTINGS
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 30), elements=VALUES), min_size=1, max_size=4),
       FRACTIONS, st.floats(0, 1.5))
@example([np.array([1.0, 0.05996451], np.float32)], 1.0, 0.059964512523482685)  # cap 1e-9 above a weight
def test_pooled_threshold_matches_oracle(arrays, f, vratio):
    mags = [np.abs(a) for a in arrays]
    caps = [min(0.6, vratio * float(m.max())) for m in mags]
    t = pooled_threshold(mags, caps, f)
    n = sum(m.size for m in mags)

    # Compared in float64, as the pass does: a float32 array (or scalar) against a Python float compares
    # in float32 under numpy 2's scalar rules, where a cap just above a weight can round onto it.
    m64 = [m.astype(np.float64) for m in mags]

    def zeroed(u: float) -> int:
        return sum(int(np.count_nonzero((m == 0) | ((m <= u) & (m < c)))) for m, c in zip(m64, caps))

    cands = [float(u) for m, c in zip(m64, caps) for u in np.unique(m) if u < c or u == 0]
    ok = [u for u in cands if zeroed(u) / n <= f]
    assert t == pytest.approx(max(ok, default=0.0))
    assert zeroed(t) / n <= f or zeroed(t) == sum(int(np.count_nonzero(m == 0)) for m in mags)
