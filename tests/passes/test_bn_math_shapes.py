"""The fold math of :mod:`onnxsq.passes.bn_math` on the constants real exporters write: scalars,
1-element, [C], [C,1,1], [1,C,1,1], empty and rank-raising shapes, float16/float32/float64 and
integer constants, each against a float64 numpy oracle."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import FLOATS, SHAPES, float_arrays, int_arrays

from onnxsq.passes.fold_batchnorm import bn_math as bm


def oracle_per_channel(value: np.ndarray, rank: int, channels: int):
    """Broadcast ``value`` against a [2, channels, 3, ...] tensor; per-channel iff the result varies
    along axis 1 only and the shape does not grow."""
    v = np.asarray(value, np.float64)
    if rank < 2 or v.ndim > rank:
        return None
    probe = (2, channels) + (3,) * (rank - 2)
    try:
        full = np.broadcast_to(v, probe)
    except ValueError:
        return None
    if np.broadcast_shapes(v.shape, probe) != probe:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return full[0, :, ...].reshape(channels, -1)[:, 0].copy()


@settings(max_examples=200, deadline=None)
@given(st.one_of(float_arrays(), int_arrays()), st.integers(0, 5), st.integers(1, 5))
def test_per_channel_equals_broadcast_oracle(value, rank, channels):
    got = bm.per_channel(value, rank, channels)
    expect = oracle_per_channel(value, rank, channels)
    if expect is None:
        assert got is None
    else:
        assert got is not None and got.shape == (channels,) and got.dtype == np.float64
        np.testing.assert_array_equal(got, expect)


@st.composite
def conv_weights(draw):
    dtype = draw(st.sampled_from(FLOATS))
    group = draw(st.integers(1, 3))
    m = group * draw(st.integers(1, 3))
    c = group * draw(st.integers(1, 2))
    kernel = draw(st.sampled_from([(), (1,), (3,), (1, 1), (3, 3), (1, 2, 2)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((m, c // group) + kernel).astype(dtype)
    return w, group, rng.standard_normal(m), rng.standard_normal(m)


@settings(max_examples=100, deadline=None)
@given(conv_weights())
def test_conv_scaling_and_bias_equal_float64_oracle(case):
    w, _, s, t = case
    got = bm.scale_conv_weight(w, s, w.dtype)
    expect = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    np.testing.assert_array_equal(got, expect)
    assert got.dtype == w.dtype
    np.testing.assert_array_equal(bm.fold_bias(None, s, t), t)
    b = np.arange(s.size, dtype=np.float64)
    np.testing.assert_array_equal(bm.fold_bias(b, s, t), s * b + t)


@settings(max_examples=100, deadline=None)
@given(conv_weights())
def test_convtranspose_scaling_hits_each_output_channel_once(case):
    w, group, s, _ = case  # read as a ConvTranspose weight [C, M/g, k...]
    c_in, per_group = w.shape[0], w.shape[1]
    if c_in % group:
        return
    s = np.random.default_rng(0).standard_normal(per_group * group)
    got = bm.scale_convtranspose_weight(w, s, group, np.float64)
    expect = np.empty(w.shape)
    for ci in range(c_in):
        g = ci // (c_in // group)
        for j in range(per_group):
            expect[ci, j] = w[ci, j].astype(np.float64) * s[g * per_group + j]
    np.testing.assert_array_equal(got, expect)
    assert bm.convtranspose_out_channels(w, group) == s.size


@settings(max_examples=100, deadline=None)
@given(conv_weights())
def test_fold_into_next_conv_equals_per_element_oracle(case):
    w, group, _, _ = case
    c = w.shape[1] * group
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal(c), rng.standard_normal(c)
    new_w, new_b = bm.fold_into_next_conv(w, None, group, s, t)
    m, cg = w.shape[:2]
    w64 = w.astype(np.float64)
    for o in range(m):
        g = o // (m // group)
        for i in range(cg):
            np.testing.assert_array_equal(new_w[o, i], w64[o, i] * s[g * cg + i])
    expect_b = [sum(float(w64[o, i].sum()) * t[(o // (m // group)) * cg + i] for i in range(cg)) for o in range(m)]
    np.testing.assert_allclose(new_b, expect_b, rtol=1e-12, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(FLOATS), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.integers(0, 2**32 - 1))
def test_matrix_columns_and_gemm_c(dtype, k, n, trans, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k) if trans else (k, n)).astype(dtype)
    s, t = rng.standard_normal(n), rng.standard_normal(n)
    got = bm.scale_matrix_columns(w, s, trans, dtype)
    expect = (w.astype(np.float64) * (s[:, None] if trans else s[None, :])).astype(dtype)
    np.testing.assert_array_equal(got, expect)
    for c in (None, np.float32(0.5), rng.standard_normal(n), rng.standard_normal((1, n))):
        out = bm.fold_gemm_c(c, 2.0, s, t)
        ref = t if c is None else np.asarray(c, np.float64) * 2.0 * s + t
        np.testing.assert_array_equal(out, ref)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 2**32 - 1), st.sampled_from(FLOATS))
def test_bn_affine_and_standalone_form(c, rank, seed, dtype):
    rng = np.random.default_rng(seed)
    g, b, m = (rng.standard_normal(c).astype(dtype) for _ in range(3))
    v = rng.uniform(0.1, 2, c).astype(dtype)
    s, t = bm.bn_affine(g, b, m, v, 1e-5)
    g64, b64, m64, v64 = (a.astype(np.float64) for a in (g, b, m, v))
    np.testing.assert_array_equal(s, g64 / np.sqrt(v64 + 1e-5))
    np.testing.assert_array_equal(t, b64 - m64 * s)
    mul, add = bm.standalone_form(s, t, rank)
    assert mul.shape == (c,) + (1,) * (rank - 2) and add.shape == mul.shape
    assert bm.standalone_form(np.ones(c), np.zeros(c), rank) == (None, None)


@given(float_arrays(SHAPES), st.sampled_from(FLOATS))
def test_cast_like_keeps_shape_and_is_contiguous(values, dtype):
    out = bm.cast_like(values.astype(np.float64), np.empty((), dtype))
    assert out.dtype == dtype and out.shape == values.shape and out.flags.c_contiguous
