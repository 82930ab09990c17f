"""Every function of :mod:`onnxsq.calibration.pow2` on the tensors real models hold: 0-d (a scalar
constant crashed ``quantize`` on 4 of 9 real models), 1-element, empty and per-channel shapes,
float16/float32/float64 and integer inputs, each against an exact float64 numpy oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import FLOATS, NONEMPTY_SHAPES, SHAPES, as_input, float_arrays, int_arrays

from onnxsq.calibration import pow2

BITS = st.sampled_from([2, 4, 8, 16])
SHIFTS = st.integers(-10, 20)


def oracle_quantize(x, shift, bits, signed, symmetric=False, axis=None):
    qmin, qmax = pow2.int_range(bits, signed, symmetric=symmetric)
    x64 = np.asarray(x, np.float64)
    s = np.asarray(shift, np.float64)
    if axis is not None and s.ndim:
        shape = [1] * x64.ndim
        shape[axis] = s.size
        s = s.reshape(shape)
    return np.clip(np.rint(x64 * np.exp2(s)), qmin, qmax).astype(np.int64)


def test_scalar_constant_regression():
    """paddle2onnx's Conv -> Mul(0-d scale): quantize returned a numpy scalar and round_clipped could
    not clip it in place ("return arrays must be of ArrayType")."""
    for x in (np.float32(0.3), np.array(0.3, np.float32), np.array(0.3), np.float16(0.5), 0.7):
        q = pow2.quantize(x, 4, 8, True, symmetric=True)
        assert isinstance(q, np.ndarray) and q.shape == ()
        assert int(q) == int(np.rint(float(x) * 16))
    assert pow2.weight_shift(np.array(0.3, np.float32), 8, method="mse") == pow2.weight_shift(
        np.array([0.3], np.float32), 8, method="mse")


@settings(max_examples=150, deadline=None)
@given(st.one_of(float_arrays(), int_arrays()), SHIFTS, BITS, st.booleans(), st.booleans(), st.booleans())
def test_quantize_equals_float64_oracle(x, shift, bits, signed, symmetric, scalar):
    if not signed:
        symmetric = False
    q = pow2.quantize(as_input(x, scalar), shift, bits, signed, symmetric=symmetric)
    assert isinstance(q, np.ndarray) and q.shape == x.shape and q.dtype == np.int64
    np.testing.assert_array_equal(q, oracle_quantize(x, shift, bits, signed, symmetric))


@settings(max_examples=100, deadline=None)
@given(float_arrays(NONEMPTY_SHAPES.filter(lambda s: len(s) >= 1)), st.data(), BITS)
def test_quantize_per_channel_equals_oracle(x, data, bits):
    axis = data.draw(st.integers(0, x.ndim - 1))
    shifts = np.asarray(data.draw(st.lists(SHIFTS, min_size=x.shape[axis], max_size=x.shape[axis])), np.int64)
    q = pow2.quantize(x, shifts, bits, True, symmetric=True, axis=axis)
    np.testing.assert_array_equal(q, oracle_quantize(x, shifts, bits, True, True, axis))
    back = pow2.dequantize(q, shifts, axis=axis, dtype=np.float64)
    shape = [1] * x.ndim
    shape[axis] = shifts.size
    np.testing.assert_array_equal(back, q * np.exp2(-shifts.astype(np.float64)).reshape(shape))


@settings(max_examples=100, deadline=None)
@given(float_arrays(), SHIFTS, BITS, st.booleans(), st.booleans())
def test_fake_quantize_keeps_shape_dtype_and_zeros(x, shift, bits, signed, scalar):
    y = pow2.fake_quantize(as_input(x, scalar), shift, bits, signed)
    assert np.shape(y) == x.shape and np.asarray(y).dtype == x.dtype
    expect = oracle_quantize(x, shift, bits, signed) * math.ldexp(1.0, -shift)
    np.testing.assert_array_equal(np.asarray(y, np.float64), expect.astype(x.dtype).astype(np.float64))
    assert np.all(np.asarray(y)[x == 0] == 0)


@settings(max_examples=100, deadline=None)
@given(float_arrays(SHAPES, magnitude=1e3), BITS, st.sampled_from(["minmax", "mse"]), st.data())
def test_weight_shift_on_every_shape(w, bits, method, data):
    axis = data.draw(st.none() | st.integers(0, max(w.ndim - 1, 0))) if w.ndim else None
    shift = pow2.weight_shift(w, bits, axis=axis, method=method)
    if axis is None:
        assert isinstance(shift, int)
        m = float(np.max(np.abs(w.astype(np.float64)), initial=0.0))
        base = pow2.fit_shift(-m, m, bits, True, symmetric=True)
        assert base <= shift <= base + 2 if method == "mse" and w.size else shift == base
    else:
        assert np.shape(shift) == (w.shape[axis],)
    # whatever the choice, the integers it gives hold the weights within one step (or saturate)
    q = pow2.quantize(w, shift, bits, True, symmetric=True, axis=axis)
    assert q.shape == w.shape


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(FLOATS + (np.float32,)), NONEMPTY_SHAPES, st.integers(-2**15, 2**15), st.integers(0, 2**15))
def test_round_clipped_equals_rint_clip(dtype, shape, lo, span):
    rng = np.random.default_rng(abs(lo) + span)
    dtype = np.float32 if dtype == np.float16 else dtype  # the kernel works in float32/float64 buffers
    buf = np.asarray((rng.standard_normal(shape) * 2**16).round(1), dtype=dtype)
    expect = np.clip(np.rint(buf.astype(np.float64)), lo, lo + span)
    out = pow2.round_clipped(buf, lo, lo + span)
    assert out is buf
    np.testing.assert_array_equal(out, expect)


def test_round_clipped_refuses_a_numpy_scalar():
    with pytest.raises(TypeError, match="ndarray"):
        pow2.round_clipped(np.float32(0.5), 0, 1)
    zero_d = np.array(2.5, np.float32)
    assert float(pow2.round_clipped(zero_d, -8, 8)) == 2.0  # half to even, 0-d in place


@settings(max_examples=100, deadline=None)
@given(float_arrays(SHAPES, dtypes=st.sampled_from((np.float32, np.float64)), magnitude=1e6), float_arrays(
    SHAPES, dtypes=st.sampled_from((np.float32, np.float64)), magnitude=1e6), BITS, st.booleans())
def test_fit_shift_broadcasts_like_numpy(a, b, bits, signed):
    try:
        lo, hi = np.broadcast_arrays(np.minimum(a, 0) if signed else np.zeros_like(a), np.abs(b))
    except ValueError:
        with pytest.raises(ValueError):
            pow2.fit_shift(np.minimum(a, 0), np.abs(b), bits, True)
        return
    shift = pow2.fit_shift(lo, hi, bits, signed)
    assert np.shape(shift) == lo.shape
    qmin, qmax = pow2.int_range(bits, signed)
    for idx in np.ndindex(lo.shape):
        s = int(np.asarray(shift)[idx])
        if lo[idx] == 0 and hi[idx] == 0:
            assert s == bits - 1
        elif pow2.MIN_SHIFT < s < pow2.MAX_SHIFT:
            step = math.ldexp(1.0, -s)
            assert qmin * step <= lo[idx] and hi[idx] <= qmax * step


@given(NONEMPTY_SHAPES, st.integers(pow2.MIN_SHIFT, pow2.MAX_SHIFT))
def test_scale_shift_round_trip_and_power_of_two(shape, s):
    shifts = np.full(shape, s, np.int64)
    scales = pow2.scale_of(shifts if shape else s)
    assert np.shape(scales) == shape
    assert pow2.is_power_of_two(scales)
    back = pow2.shift_of(scales)
    np.testing.assert_array_equal(back, shifts if shape else s)
    assert not pow2.is_power_of_two(np.zeros((0,)))  # an empty scale is no scale
    p = pow2.power_of_two(shifts.reshape(-1), np.float32, 4, 1) if shifts.size else None
    if p is not None:
        assert p.shape == (1, shifts.size, 1, 1) and np.all(p == np.float32(2.0**s))


@given(st.integers(-20, 20), st.one_of(st.integers(-20, 20), st.lists(st.integers(-20, 20), max_size=4)),
       st.integers(-20, 20))
def test_bias_and_requant_shifts(s_in, s_w, s_out):
    b = pow2.bias_shift(s_in, np.asarray(s_w) if isinstance(s_w, list) else s_w)
    np.testing.assert_array_equal(b, np.asarray(s_w) + s_in)
    np.testing.assert_array_equal(pow2.requant_shift(s_in, np.asarray(s_w) if isinstance(s_w, list) else s_w,
                                                     s_out), np.asarray(s_w) + s_in - s_out)


def test_expand_shape_and_int_range_and_sqnr():
    assert pow2.expand_shape(np.array(3), 4, 1).shape == ()
    assert pow2.expand_shape(np.arange(3), 4, 1).shape == (1, 3, 1, 1)
    assert pow2.expand_shape(np.arange(3), 2, None).shape == (3,)
    assert pow2.int_range(8, True) == (-128, 127) and pow2.int_range(8, True, symmetric=True) == (-127, 127)
    assert pow2.int_range(16, False) == (0, 65535)
    with pytest.raises(ValueError):
        pow2.int_range(1, True)
    assert pow2.sqnr_db(1.0, 0.0) == math.inf and pow2.sqnr_db(0.0, 1.0) == -math.inf
    assert pow2.sqnr_db(100.0, 1.0) == pytest.approx(20.0)
