"""Power-of-two math: fitting shifts, and QuantizeLinear → DequantizeLinear in onnxruntime == numpy, exactly."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxsq.calibration import pow2
from onnxsq.params import TensorQuant
from onnxsq.passes.quantize.insert import insert_qdq
from onnxsq.runtime import make_session


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-6, 1e6), st.floats(1e-6, 1e6), st.integers(2, 16), st.booleans())
def test_fit_shift_is_the_finest_that_holds_the_range(neg, pos, bits, signed):
    lo = -neg if signed else 0.0
    shift = pow2.fit_shift(lo, pos, bits, signed)
    qmin, qmax = pow2.int_range(bits, signed)
    step = math.ldexp(1.0, -shift)
    assert qmin * step <= lo and pos <= qmax * step  # everything fits
    finer = step / 2
    assert not (qmin * finer <= lo and pos <= qmax * finer)  # and one finer step would not


def test_fit_shift_edges():
    assert pow2.fit_shift(0.0, 255.0, 8, False) == 0  # 255 fits exactly at scale 1
    assert pow2.fit_shift(0.0, 255.5, 8, False) == -1
    assert pow2.fit_shift(-128.0, 127.0, 8, True) == 0
    assert pow2.fit_shift(-1.0, 1.0, 8, True, symmetric=True) == 6  # 127/64 >= 1 > 127/128
    assert pow2.fit_shift(0.0, 0.0, 8, False) == 7  # empty range: a default, not an error
    assert pow2.fit_shift(0.0, 1e-310, 8, False) == pow2.MAX_SHIFT  # subnormal: clamped, no overflow
    assert pow2.fit_shift(0.0, 1e300, 8, False) == pow2.MIN_SHIFT
    with pytest.raises(ValueError):
        pow2.fit_shift(-1.0, 1.0, 8, False)
    np.testing.assert_array_equal(pow2.fit_shift(np.array([-1.0, -4.0]), np.array([1.0, 4.0]), 8, True,
                                                 symmetric=True), [6, 4])


def test_shift_of_and_is_power_of_two():
    assert pow2.shift_of(0.125) == 3 and pow2.shift_of(4.0) == -2
    np.testing.assert_array_equal(pow2.shift_of(np.array([0.5, 2.0], np.float32)), [1, -1])
    assert pow2.is_power_of_two(np.float32(2.0**-20)) and not pow2.is_power_of_two(0.3)
    with pytest.raises(ValueError):
        pow2.shift_of(0.3)


def test_quantize_rounds_half_to_even_and_keeps_zeros():
    x = np.array([0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], np.float32)
    np.testing.assert_array_equal(pow2.quantize(x, 0, 8, True), [0, 0, 0, 2, 2, 0, -2, 127, -128])
    np.testing.assert_array_equal(pow2.quantize(x, 0, 8, True, symmetric=True)[-1], -127)


def _qdq_model(shape: list[int], q: TensorQuant, const: np.ndarray | None) -> onnx.ModelProto:
    """x → Identity → y (quantized as an activation), plus an Identity reading a constant ``c``."""
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id_x")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    inits = []
    if const is not None:
        inits.append(numpy_helper.from_array(const, "c"))
        nodes.append(helper.make_node("Identity", ["c"], ["cy"], name="id_c"))
        outputs.append(helper.make_tensor_value_info("cy", TensorProto.FLOAT, list(const.shape)))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


@settings(max_examples=25, deadline=None)
@given(st.integers(-6, 12), st.integers(2, 8), st.booleans(), st.integers(0, 2**31 - 1))
def test_onnxruntime_qdq_equals_numpy_oracle_exactly(shift, bits, signed, seed):
    rng = np.random.default_rng(seed)
    step = 2.0**-shift
    # values on and between the grid, ties (k + 0.5) * step, beyond the range, and exact zeros
    x = np.concatenate([rng.normal(0, 100 * step, 200), (rng.integers(-300, 300, 50) + 0.5) * step,
                        np.zeros(5)]).astype(np.float32)
    w = (rng.normal(0, 60 * step, (4, 6)) * (rng.random((4, 6)) > 0.3)).astype(np.float32)
    wshift = [int(s) for s in pow2.weight_shift(w, bits, axis=0)]
    params = {"y": TensorQuant("y", "activation", bits, signed, shift),
              "c": TensorQuant("c", "weight", bits, True, wshift, axis=0)}
    model = insert_qdq(_qdq_model([x.size], params["y"], w), params)
    y, cy = make_session(model).run(["y", "cy"], {"x": x})
    np.testing.assert_array_equal(y, pow2.fake_quantize(x, shift, bits, signed))
    np.testing.assert_array_equal(cy, pow2.fake_quantize(w, wshift, bits, True, symmetric=True, axis=0))
    assert np.all(cy[w == 0] == 0) and np.all(y[x == 0] == 0)


def test_bias_and_requant_shifts_add():
    assert pow2.bias_shift(5, 7) == 12
    np.testing.assert_array_equal(pow2.bias_shift(5, np.array([6, 7])), [11, 12])
    assert pow2.requant_shift(5, 7, 4) == 8
    assert pow2.sqnr_db(1.0, 0.0) == math.inf and pow2.sqnr_db(100.0, 1.0) == pytest.approx(20.0)


def test_weight_mse_shift_never_worse_than_fitting():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = 8.5  # one outlier just past a power of two: saturating it buys a finer step for all
    for axis in (None, 0):
        fit = pow2.weight_shift(w, 8, axis=axis)
        mse = pow2.weight_shift(w, 8, axis=axis, method="mse")
        assert np.all(np.asarray(mse) >= np.asarray(fit))
        err = [float(np.sum((w - pow2.fake_quantize(w, s, 8, True, symmetric=True, axis=axis)) ** 2))
               for s in (fit, mse)]
        assert err[1] <= err[0]
    assert pow2.weight_shift(w, 8, method="mse") > pow2.weight_shift(w, 8)


def _mse_shift_oracle(w: np.ndarray, bits: int, axis: int | None, candidates: int = 2):
    """The rule spelled out: float64 fake quantization per candidate, strict improvement wins."""
    base = np.asarray(pow2.weight_shift(w, bits, axis=axis))
    reduce = None if axis is None else tuple(i for i in range(w.ndim) if i != axis)
    w64 = w.astype(np.float64)
    best, best_err = base.copy(), None
    for extra in range(candidates + 1):
        shift = np.minimum(base + extra, pow2.MAX_SHIFT)
        deq = pow2.dequantize(pow2.quantize(w64, shift, bits, True, symmetric=True, axis=axis), shift, axis=axis,
                              dtype=np.float64)
        err = ((w64 - deq) ** 2).sum(axis=reduce)
        if best_err is None:
            best_err = err
            continue
        best, best_err = np.where(err < best_err, shift, best), np.where(err < best_err, err, best_err)
    return best


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 16), st.sampled_from([np.float16, np.float32, np.float64]), st.sampled_from([None, 0, 1]),
       st.floats(-8, 4), st.booleans(), st.integers(0, 2**31 - 1))
def test_weight_mse_shift_equals_the_float64_rule(bits, dtype, axis, log_scale, on_grid, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((5, 7, 3)) * 10.0**log_scale
    if on_grid:  # exact ties between candidates (zero error at several shifts) keep the coarser shift
        w = np.round(w * 4) / 4
    w = w.astype(dtype)
    w[0, 0] = 0
    np.testing.assert_array_equal(pow2.weight_shift(w, bits, axis=axis, method="mse"),
                                  _mse_shift_oracle(w, bits, axis))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shift=st.integers(-8, 30), bits=st.sampled_from([2, 4, 8, 16]),
       signed=st.booleans(), magnitude=st.integers(-10, 4))
def test_float32_quantize_equals_the_float64_oracle(seed, shift, bits, signed, magnitude):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(257) * 10.0**magnitude).astype(np.float32)
    x[:4] = [0.5 * 2.0**-shift, 1.5 * 2.0**-shift, -2.5 * 2.0**-shift, 1e-40]  # ties and a subnormal
    qmin, qmax = pow2.int_range(bits, signed)
    oracle = np.clip(np.rint(x.astype(np.float64) * 2.0**shift), qmin, qmax).astype(np.int64)
    got = pow2.quantize(x, shift, bits, signed, dtype=np.int32)
    assert got.dtype == np.int32
    assert np.array_equal(got, oracle)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_clipped_equals_rint_then_clip(dtype):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(10000) * 200, np.arange(-300, 300) + 0.5, [-0.5, 0.5, -0.0, 1e-30,
                        np.inf, -np.inf, 2.0**40, -(2.0**40)]]).astype(dtype)
    for lo, hi in ((-127, 127), (0, 255), (-128, 127), (-32768, 32767)):
        want = np.clip(np.rint(x), lo, hi)
        got = pow2.round_clipped(x.copy(), lo, hi)
        assert np.array_equal(got, want), (lo, hi)
