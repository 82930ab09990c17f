"""Each integer kernel against a plain-Python (loops, exact integers) oracle on small cases."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from onnxsq.simulate import kernels as K
from onnxsq.simulate.rounding import (
    ROUNDINGS,
    float_saturate,
    requantize,
    requantize_saturate,
    round_float,
    saturate,
    wrap,
)


def _round_oracle(value: Fraction, rounding: str) -> int:
    fl = value.numerator // value.denominator
    rem = value - fl
    if rounding == "floor":
        return fl
    if rem > Fraction(1, 2):
        return fl + 1
    if rem < Fraction(1, 2):
        return fl
    return {"half-even": fl + (fl % 2), "half-up": fl + 1, "half-away": fl + 1 if value > 0 else fl}[rounding]


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_ties_negative_and_left_shifts(rounding):
    v = np.arange(-40, 41, dtype=np.int64)
    for k in (-2, 0, 1, 2, 3):
        for d in (1, 3, 9):
            got = requantize(v, k, rounding, d)
            want = [_round_oracle(Fraction(int(x), d) / Fraction(2) ** k, rounding) for x in v]
            assert got.tolist() == want, (k, d)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_saturate_is_requantize_then_saturate(rounding):
    """The fused float path (any shift sign, per channel, a divisor, values past float64) against the
    exact oracle: the rounded value, saturated, and the clipped count."""
    v = np.arange(-1200, 1200, 8, dtype=np.int64).reshape(1, 3, -1) + np.arange(3).reshape(1, 3, 1)
    cases = [(v, np.array([[[2]], [[-1]], [[0]]]).reshape(1, 3, 1), 1), (v, 3, 1), (v, 2, 3), (v, -2, 1),
             (np.array([(1 << 52) + 5, -(1 << 52) - 3], dtype=np.int64), 44, 1)]
    for x, k, d in cases:
        for bits, signed in ((8, True), (8, False), (16, True)):
            want, n = saturate(np.broadcast_to(np.array([
                _round_oracle(Fraction(int(a), d) / Fraction(2) ** int(s), rounding)
                for a, s in zip(x.ravel(), np.broadcast_to(k, x.shape).ravel())]).reshape(x.shape), x.shape),
                bits, signed)
            got, m = requantize_saturate(x, k, rounding, d, bits, signed)
            assert got.dtype == np.int32 and got.tolist() == want.tolist() and m == n, (k, d, bits, signed)


def test_scalars_requantize_and_saturate():
    assert requantize_saturate(np.int64(300), 1, "half-even", 1, 8, True)[0].tolist() == 127
    q, n = float_saturate(np.float32(2.5), 0, "half-even", 8, False)
    assert q.tolist() == 2 and n == 0


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_float_saturate_matches_round_float(rounding):
    x = (np.arange(-300, 301, dtype=np.float32) / np.float32(8)).astype(np.float32)
    want, n = saturate(round_float(x.astype(np.float64) * 4, rounding).astype(np.int64), 8, True)
    got, m = float_saturate(x, 2, rounding, 8, True)
    assert got.tolist() == want.tolist() and m == n


def test_requantize_per_channel_shift_broadcasts():
    v = np.array([[5, 6, 7], [-5, -6, -7]], dtype=np.int64)
    k = np.array([[1], [2]])
    assert requantize(v, k).tolist() == [[2, 3, 4], [-1, -2, -2]]


def test_ties_known_values():
    v = np.array([5, -5, 3, -3, 1, -1], dtype=np.int64)  # x/2: 2.5 -2.5 1.5 -1.5 0.5 -0.5
    assert requantize(v, 1, "half-even").tolist() == [2, -2, 2, -2, 0, 0]
    assert requantize(v, 1, "half-up").tolist() == [3, -2, 2, -1, 1, 0]
    assert requantize(v, 1, "half-away").tolist() == [3, -3, 2, -2, 1, -1]
    assert requantize(v, 1, "floor").tolist() == [2, -3, 1, -2, 0, -1]


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_round_float_matches_integer_rounding(rounding):
    v = np.arange(-64, 65, dtype=np.int64)
    assert round_float(v / 4.0, rounding).astype(np.int64).tolist() == requantize(v, 2, rounding).tolist()


def test_saturate_and_wrap():
    q, n = saturate(np.array([-300, -129, -128, 0, 127, 128, 300]), 8, True)
    assert q.tolist() == [-128, -128, -128, 0, 127, 127, 127] and n == 4
    q, n = saturate(np.array([-1, 0, 255, 256]), 8, False)
    assert q.tolist() == [0, 0, 255, 255] and n == 2
    w, n = wrap(np.array([2**31, -(2**31) - 1, 5], dtype=np.int64), 32)
    assert w.tolist() == [-(2**31), 2**31 - 1, 5] and n == 2


def _conv_oracle(x, w, strides, pads, dil, group):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    out = np.zeros((n, m, oh, ow), dtype=object)
    mg = m // group
    for b, o, i, j in itertools.product(range(n), range(m), range(oh), range(ow)):
        g = o // mg
        acc = 0
        for ci, a, e in itertools.product(range(cg), range(kh), range(kw)):
            y = i * strides[0] - pads[0] + a * dil[0]
            z = j * strides[1] - pads[1] + e * dil[1]
            if 0 <= y < h and 0 <= z < wd:
                acc += int(x[b, g * cg + ci, y, z]) * int(w[o, ci, a, e])
        out[b, o, i, j] = acc
    return out.astype(np.int64)


CONV_CASES = [
    dict(c=3, m=4, k=3, strides=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1), group=1),
    dict(c=4, m=6, k=3, strides=(2, 2), pads=(0, 1, 1, 0), dil=(1, 1), group=2),
    dict(c=4, m=4, k=3, strides=(1, 2), pads=(2, 2, 2, 2), dil=(2, 2), group=4),  # depthwise, dilated
    dict(c=2, m=3, k=2, strides=(3, 1), pads=(0, 0, 0, 0), dil=(1, 3), group=1),
    dict(c=6, m=6, k=5, strides=(2, 2), pads=(2, 2, 2, 2), dil=(1, 1), group=6),  # depthwise, strided
    dict(c=3, m=5, k=3, strides=(1, 1), pads=(0, 2, 1, 1), dil=(2, 1), group=1),  # per-tap products, dilated
    dict(c=5, m=4, k=1, strides=(1, 1), pads=(1, 0, 0, 1), dil=(1, 1), group=1),  # 1x1, padded
    dict(c=6, m=9, k=2, strides=(1, 1), pads=(1, 1, 0, 0), dil=(1, 1), group=3),  # groups: one batched product
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_loops(case):
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, case["c"], 7, 8))
    w = rng.integers(-127, 128, (case["m"], case["c"] // case["group"], case["k"], case["k"]))
    got = K.conv(x, w, strides=case["strides"], pads=case["pads"], dilations=case["dil"], group=case["group"])
    want = _conv_oracle(x, w, case["strides"], case["pads"], case["dil"], case["group"])
    assert np.array_equal(got, want)


def test_conv_large_sums_stay_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(200, 256, (1, 64, 5, 5))  # K = 576 taps of up to 255 * 127: past float32's exact range
    w = rng.integers(100, 128, (2, 64, 3, 3))
    got = K.conv(x, w, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    assert np.array_equal(got, _conv_oracle(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1))


@pytest.mark.parametrize("group", [1, 2, 64])
def test_conv_large_sums_per_path(group):
    rng = np.random.default_rng(6)  # past float32's exact range: float64 per tap, grouped, depthwise
    x = rng.integers(200, 256, (1, 64, 6, 5))
    w = rng.integers(100, 128, (64, 64 // group, 3, 3))
    for strides in ((1, 1), (2, 1)):
        got = K.conv(x, w, strides=strides, pads=(1, 0, 1, 2), dilations=(1, 1), group=group)
        assert np.array_equal(got, _conv_oracle(x, w, strides, (1, 0, 1, 2), (1, 1), group))


def test_conv_auto_pad():
    assert K.conv_pads([7, 8], [3, 3], [2, 2], [1, 1], None, "SAME_UPPER") == [1, 0, 1, 1]
    assert K.conv_pads([7, 8], [3, 3], [2, 2], [1, 1], None, "SAME_LOWER") == [1, 1, 1, 0]
    assert K.conv_pads([7, 8], [3, 3], [2, 2], [1, 1], [1, 2, 3, 4], "VALID") == [0, 0, 0, 0]


def _conv_transpose_oracle(x, w, strides, pads, dil, group, opad):
    n, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    cg = c // group
    fh = (h - 1) * strides[0] + (kh - 1) * dil[0] + 1 + opad[0]
    fw = (wd - 1) * strides[1] + (kw - 1) * dil[1] + 1 + opad[1]
    full = np.zeros((n, mg * group, fh, fw), dtype=object)
    for b, ci, i, j, o, a, e in itertools.product(range(n), range(c), range(h), range(wd), range(mg), range(kh),
                                                  range(kw)):
        g = ci // cg
        yi, yj = i * strides[0] + a * dil[0], j * strides[1] + e * dil[1]
        full[b, g * mg + o, yi, yj] += int(x[b, ci, i, j]) * int(w[ci, o, a, e])
    return full[:, :, pads[0]:fh - pads[2], pads[1]:fw - pads[3]].astype(np.int64)


@pytest.mark.parametrize("strides,pads,dil,group,opad", [
    ((2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 1)),
    ((2, 2), (0, 0, 0, 0), (1, 1), 2, (0, 0)),
    ((1, 3), (1, 0, 0, 2), (2, 1), 1, (0, 2)),
])
def test_conv_transpose_matches_loops(strides, pads, dil, group, opad):
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (2, 4, 3, 4))
    w = rng.integers(-127, 128, (4, 3, 3, 3))
    got = K.conv_transpose(x, w, strides=strides, pads=pads, dilations=dil, group=group, output_padding=opad)
    assert np.array_equal(got, _conv_transpose_oracle(x, w, strides, pads, dil, group, opad))


def _pool_oracle(x, kernel, strides, pads, fn, include_pad=False):
    n, c, h, wd = x.shape
    oh = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    out, counts = np.zeros((n, c, oh, ow), dtype=np.int64), np.zeros((oh, ow), dtype=np.int64)
    for b, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        vals, padded = [], 0
        for a, e in itertools.product(range(kernel[0]), range(kernel[1])):
            y, z = i * strides[0] - pads[0] + a, j * strides[1] - pads[1] + e
            if 0 <= y < h and 0 <= z < wd:
                vals.append(int(x[b, ch, y, z]))
            else:
                padded += 1
        out[b, ch, i, j] = fn(vals)
        counts[i, j] = len(vals) + (padded if include_pad else 0)
    return out, counts


def test_max_pool_matches_loops():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 3, 7, 6))
    attrs = dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])
    want, _ = _pool_oracle(x, (3, 2), (2, 1), (1, 0, 1, 1), max)
    assert np.array_equal(K.max_pool(x, attrs), want)


@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool_sums_and_counts(include_pad):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (1, 2, 6, 5))
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=include_pad)
    sums, counts = K.avg_pool_sums(x, attrs)
    want, want_counts = _pool_oracle(x, (3, 3), (2, 2), (1, 1, 1, 1), sum, bool(include_pad))
    assert np.array_equal(sums, want)
    assert np.array_equal(np.broadcast_to(counts, sums.shape[-2:]), want_counts)


def test_resize_nearest_index_modes():
    assert K.nearest_index(4, 8, 2.0, "asymmetric", "floor").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert K.nearest_index(4, 8, 2.0, "half_pixel", "round_prefer_floor").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # ties (x / 2 = k + 0.5) go down or up by nearest_mode
    assert K.nearest_index(4, 8, 2.0, "asymmetric", "round_prefer_floor").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert K.nearest_index(4, 8, 2.0, "asymmetric", "round_prefer_ceil").tolist() == [0, 1, 1, 2, 2, 3, 3, 3]
    assert K.nearest_index(3, 5, 5 / 3, "align_corners", "round_prefer_floor").tolist() == [0, 0, 1, 1, 2]


def test_exact_matmul_switches_precision():
    a = np.full((2, 3000), 255, dtype=np.int64)
    b = np.full((3000, 2), 127, dtype=np.int64)
    assert (K.exact_matmul(a, b) == 3000 * 255 * 127).all()
    big = np.full((1, 4), 2**40, dtype=np.int64)
    assert K.exact_matmul(big, np.full((4, 1), 2**12, dtype=np.int64))[0, 0] == 4 * 2**52


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_requantize_huge_values_take_the_shift_path(rounding):
    base = np.int64(1) << 52  # past float64's exact range: shifts and masks, no float
    v = np.array([base + 5, -base - 5, base + 4, -base - 3], dtype=np.int64)
    got = requantize(v, 1, rounding)
    want = [_round_oracle(Fraction(int(x), 2), rounding) for x in v]
    assert got.tolist() == want


def test_max_pool_keeps_small_integer_types():
    x = np.array([[[[-128, -5], [3, 7]]]], dtype=np.int8)
    attrs = dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2])
    assert K.max_pool(x, attrs).tolist() == [[[[-128, -5], [3, 7]]]]


def test_exact_matmul_float64_path_for_many_rows():
    rng = np.random.default_rng(5)
    a = rng.integers(200, 256, (2000, 1600))  # 4 float32 chunks over 2000 rows: the float64 product instead
    b = rng.integers(100, 128, (1600, 3))
    assert np.array_equal(K.exact_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))
