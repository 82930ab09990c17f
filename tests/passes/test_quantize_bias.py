"""Bias correction: exact weight errors, the mean output error per layer type against onnxruntime, and
the quantize pass using it (on by default, off for given weights, reproduced from a parameters file)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.calibration import pow2
from onnxsq.params import TensorQuant, read_params
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.bias import mean_axis, output_error, weight_error
from onnxsq.passes.quantize.placement_plan import WeightUse
from onnxsq.runtime import make_session


def _param(w, shift, axis=None):
    return TensorQuant("w", "weight", 8, True, shift if axis is None else list(shift), axis)


@pytest.mark.parametrize("axis", [None, 0])
def test_weight_error_is_exact(axis):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    shift = pow2.weight_shift(w, 8, axis=axis, method="mse")
    p = _param(w, shift if axis is None else shift.tolist(), axis)
    want = pow2.fake_quantize(w.astype(np.float64), p.shift_array, 8, True, symmetric=True, axis=axis) - w
    got = weight_error(w, p)
    assert got.dtype == np.float32 and np.array_equal(got.astype(np.float64), want)


def _run_layer(node: onnx.NodeProto, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return make_session(m).run(None, {"x": x})[0].astype(np.float64)


@pytest.mark.parametrize("op, attrs, wshape, interior", [
    ("Conv", {"group": 1}, (6, 4, 3, 3), None),
    ("Conv", {"group": 2}, (6, 2, 3, 3), None),
    ("Conv", {"group": 4, "strides": [2, 2]}, (4, 1, 3, 3), None),  # depthwise, strided
    ("ConvTranspose", {"group": 1, "strides": [2, 2]}, (4, 6, 4, 4), (slice(2, -2), slice(2, -2))),
    ("ConvTranspose", {"group": 2, "strides": [2, 2]}, (4, 3, 4, 4), (slice(2, -2), slice(2, -2))),
    ("Gemm", {"transB": 1}, (5, 4), None),
    ("Gemm", {"transB": 0}, (4, 5), None),
])
def test_output_error_matches_onnxruntime(op, attrs, wshape, interior):
    """``E[dW x]``: the layer run with ``dW`` as its weight on inputs whose channel means are ``mu``
    (constant per channel, so every window sees exactly ``mu``; ConvTranspose: the interior)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(wshape).astype(np.float32)
    p = _param(w, int(pow2.weight_shift(w, 8)))
    mu = rng.uniform(0.5, 2.0, 4)
    x = (np.broadcast_to(mu[None, :, None, None], (1, 4, 9, 9)) if op != "Gemm" else mu[None, :]).astype(np.float32)
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    dw = weight_error(w, p)
    y = _run_layer(node, x, dw)
    if op == "Gemm":
        want = y[0]
    else:
        y = y[0] if interior is None else y[0][:, interior[0], interior[1]]
        want = y.mean(axis=(1, 2))
    use = WeightUse("layer", op, "w", None, "x", "y", bias="b", attrs=attrs)
    np.testing.assert_allclose(output_error(use, w, p, mu), want, rtol=1e-5, atol=1e-6)


def test_mean_axis_reasons():
    assert mean_axis(WeightUse("c", "Conv", "w", None, "x", "y", bias="b"), 4) == (1, None)
    assert "no bias" in mean_axis(WeightUse("c", "Conv", "w", None, "x", "y"), 4)[1]
    assert mean_axis(WeightUse("m", "MatMul", "w", None, "x", "y", bias="b"), 3) == (2, None)  # its bias Add
    assert "no bias" in mean_axis(WeightUse("m", "MatMul", "w", None, "x", "y"), 3)[1]
    assert "transA" in mean_axis(WeightUse("g", "Gemm", "w", None, "x", "y", bias="b", attrs={"transA": 1}), 2)[1]
    assert "rank" in mean_axis(WeightUse("c", "Conv", "w", None, "x", "y", bias="b"), None)[1]


def _net_and_data():
    from tests.passes.test_quantize import build_net

    rng = np.random.default_rng(7)
    # inputs with a large positive mean: the weights' rounding error then shifts every output
    data = [{"input": (rng.standard_normal((1, 3, 8, 8)) + 2.0).astype(np.float32)} for _ in range(24)]
    return build_net(), data


def _mean_error(model, q, data):
    f, s = make_session(model), make_session(q)
    d = np.concatenate([s.run(None, x)[0] - f.run(None, x)[0] for x in data]).astype(np.float64)
    return np.abs(d.mean(axis=0)).mean(), np.square(d).mean()


def test_bias_correction_reduces_the_output_error(tmp_path):
    model, data = _net_and_data()
    on, rep = quantize(model, data, params_out=tmp_path / "p.json")
    # (with params_out the pass aligns no scales: the same for both)
    off, rep_off = quantize(model, data, config=QuantizeConfig(bias_correction=False, align_scales=False))
    assert rep.summary["bias_corrected"] == 4 and "bias_corrected" not in rep_off.summary
    bias_on, mse_on = _mean_error(model, on, data)
    bias_off, mse_off = _mean_error(model, off, data)
    assert bias_on < bias_off and mse_on < mse_off
    # the input model is untouched, the weights are the same integers, only biases move
    b1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b1"))
    assert np.array_equal(b1, numpy_helper.to_array(next(i for i in _net_and_data()[0].graph.initializer
                                                         if i.name == "b1")))
    ion = {i.name: numpy_helper.to_array(i) for i in on.graph.initializer}
    ioff = {i.name: numpy_helper.to_array(i) for i in off.graph.initializer}
    assert np.array_equal(ion["w1_quantized"], ioff["w1_quantized"])
    assert not np.array_equal(ion["b1_quantized"], ioff["b1_quantized"])
    # the parameters file carries the correction: quantizing from it alone gives the same model
    params = read_params(tmp_path / "p.json")
    assert params["b1"].correction is not None and params["w1"].correction is None
    again, _ = quantize(model, None, params=tmp_path / "p.json")
    assert again.SerializeToString() == on.SerializeToString()


def test_given_weights_are_not_corrected(tmp_path):
    """QAT gives every weight's parameters (its bias was trained with them): the biases stay as they are."""
    model, data = _net_and_data()
    off, _ = quantize(model, data, config=QuantizeConfig(bias_correction=False), params_out=tmp_path / "p.json")
    given, rep = quantize(model, data, params=tmp_path / "p.json")  # no corrections in that file
    assert "bias_corrected" not in rep.summary
    assert given.SerializeToString() == off.SerializeToString()


@pytest.mark.parametrize("per_channel", [True, False])
def test_near_zero_weight_channel_keeps_its_bias(per_channel):
    """A channel of near-zero weights would fit a huge shift (2**-50 steps) that its bias cannot follow
    at int32 (s_b = s_in + s_w): the weight shift is lowered instead, the bias stays exact."""
    from builders import build_conv_model, run

    model = build_conv_model(bn=False, relu=False, cout=4)
    w = next(i for i in model.graph.initializer if i.name == "conv.weight")
    b = next(i for i in model.graph.initializer if i.name == "conv.bias")
    wv, bv = numpy_helper.to_array(w).copy(), numpy_helper.to_array(b).copy()
    wv[1] *= 1e-13  # a dead channel (exported networks have them), with a bias that matters
    bv[1] = 0.75
    w.CopyFrom(numpy_helper.from_array(wv, "conv.weight"))
    b.CopyFrom(numpy_helper.from_array(bv, "conv.bias"))
    rng = np.random.default_rng(1)
    calib = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    q, report = quantize(model, calib, config=QuantizeConfig(per_channel=per_channel, report_samples=0,
                                                             bias_correction=False, equalize=False))
    onnx.checker.check_model(q)
    assert not any("saturate" in w for w in report.warnings), report.warnings
    if per_channel:
        assert any("conv.weight: the shift of 1 channel(s) lowered" in w for w in report.warnings), report.warnings
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    qb = next(v for k, v in inits.items() if k.startswith("conv.bias") and v.dtype == np.int32)
    scale = next(v for k, v in inits.items() if k.startswith("conv.bias") and k.endswith("scale"))
    assert float(np.broadcast_to(scale, qb.shape)[1] * qb[1]) == pytest.approx(0.75, abs=1e-3)
    got = run(q, calib[0])[0][0, 1]
    want = run(model, calib[0])[0][0, 1]
    np.testing.assert_allclose(got, want, atol=0.07)  # channel 1 is its bias: the output step (input 8 bits) apart
