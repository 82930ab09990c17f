"""onnxsq.inspect: per-layer weight statistics, totals with their denominators, QDQ bits and shifts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxsq.errors import ModelLoadError
from onnxsq.inspect import inspect_model, zero_stats


def _model(nodes, inits, inputs, outputs, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _float_layers_model() -> onnx.ModelProto:
    """Conv with 5 zero weights, a Conv sharing that weight, Gemm, MatMul with a constant weight,
    MatMul of two activations, and a Conv whose weight is a graph input."""
    w = np.arange(1, 4 * 3 * 3 * 3 + 1, dtype=np.float32).reshape(4, 3, 3, 3)
    w.flat[[0, 7, 20, 50, 107]] = 0.0
    fc = np.ones((10, 4), np.float32)
    fc[0, :] = 0.0
    mm = np.zeros((10, 2), np.float32)
    mm[0, 0] = 3.0
    inits = [numpy_helper.from_array(w, "conv.w"), numpy_helper.from_array(np.ones(4, np.float32), "conv.b"),
             numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"),
             numpy_helper.from_array(mm, "mm.w"), numpy_helper.from_array(np.array([1, 4], np.int64), "shape")]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "conv.w"], ["c2"], name="conv_shared", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["g"], name="fc", transB=1),
        helper.make_node("MatMul", ["g", "mm.w"], ["m"], name="mm"),
        helper.make_node("MatMul", ["m", "y"], ["o"], name="act_mm"),
        helper.make_node("Conv", ["x", "dyn_w"], ["d"], name="dyn_conv"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2]),
              helper.make_tensor_value_info("dyn_w", TensorProto.FLOAT, [2, 3, 1, 1])]
    outputs = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 2]),
               helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 2, 5, 5])]
    return _model(nodes, inits, inputs, outputs)


def test_float_layers_table_and_totals():
    report = inspect_model(_float_layers_model())
    assert report.pass_name == "inspect"
    rows = {c.name: c for c in report.candidates}
    assert list(rows) == ["conv1", "conv_shared", "fc", "mm", "act_mm", "dyn_conv"]
    conv = rows["conv1"].details
    assert conv == {"weight_shape": [4, 3, 3, 3], "params": 108 + 4, "zeros": 5, "zero_fraction": 5 / 108}
    assert rows["conv_shared"].details["params"] == 108 and "shared with conv1" in rows["conv_shared"].reason
    assert rows["fc"].details == {"weight_shape": [10, 4], "params": 50, "zeros": 4, "zero_fraction": 0.1}
    assert rows["mm"].details["zeros"] == 19 and rows["mm"].details["params"] == 20
    assert rows["act_mm"].action == "skipped" and "activation" in rows["act_mm"].reason
    assert rows["dyn_conv"].action == "skipped" and "run time" in rows["dyn_conv"].reason
    s = report.summary
    # The shared weight counts once; the int64 shape tensor is not a parameter.
    assert (s["layers"], s["weight_params"], s["weight_zeros"]) == (4, 108 + 40 + 20, 5 + 4 + 19)
    assert s["sparsity"] == pytest.approx(28 / 168)
    assert (s["conv_weight_params"], s["conv_weight_zeros"]) == (108, 5)
    assert s["conv_sparsity"] == pytest.approx(5 / 108)
    assert s["layer_params"] == 112 + 50 + 20
    assert s["model_params"] == 108 + 4 + 40 + 10 + 20
    assert s["sparsity_denominator"] == "all layer weights (Conv/ConvTranspose/Gemm/MatMul)"
    assert s["conv_sparsity_denominator"] == "conv weights (Conv/ConvTranspose)"
    assert "quantized_layers" not in s


def test_input_is_not_mutated_and_bad_input_is_a_load_error(tmp_path):
    model = _float_layers_model()
    before = model.SerializeToString()
    inspect_model(model)
    assert model.SerializeToString() == before
    with pytest.raises(ModelLoadError):
        inspect_model(tmp_path / "missing.onnx")


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_zero_counts_match_numpy(shape, density, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [numpy_helper.from_array(w, "w")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[1], 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[0], None, None])])
    (c,) = inspect_model(model).candidates
    assert c.details["zeros"] == int(np.sum(w == 0))
    assert c.details["zero_fraction"] == pytest.approx(np.mean(w == 0))
    assert zero_stats(w) == (w.size, int(np.sum(w == 0)))


def _qdq_model() -> tuple[onnx.ModelProto, np.ndarray]:
    """Two quantized convs and one with a non-power-of-two weight scale.

    qconv1: int8 weight initializer → DequantizeLinear (scale 2^-7), int32 bias, input scale 2^-4,
            output quantized after a Relu at 2^-5 (uint8).
    qconv2: float weight → QuantizeLinear/DequantizeLinear per output channel (scales 2^-6, 2^-8),
            zero point 3 for int8, so "zero" means q == 3.
    qconv3: weight scale 0.3, not a power of two.
    """
    rng = np.random.default_rng(0)
    q1 = rng.integers(-5, 6, (4, 2, 3, 3)).astype(np.int8)
    w2 = (rng.integers(-40, 40, (2, 4, 1, 1)) / 64.0).astype(np.float32)
    w2[0, 0, 0, 0] = 0.001  # rounds to q == zero point at scale 2^-6
    s2 = np.array([2.0**-6, 2.0**-8], np.float32)
    zp2 = np.array([3, 3], np.int8)
    q3 = np.ones((2, 2, 1, 1), np.int8)
    c = numpy_helper.from_array
    inits = [
        c(np.array(2.0**-4, np.float32), "in.s"), c(np.array(0, np.int8), "in.zp"),
        c(q1, "q1.w"), c(np.array(2.0**-7, np.float32), "q1.s"), c(np.array(0, np.int8), "q1.zp"),
        c(np.arange(4, dtype=np.int32), "q1.b"), c(np.array(2.0**-11, np.float32), "q1.bs"),
        c(np.array(2.0**-5, np.float32), "out.s"), c(np.array(0, np.uint8), "out.zp"),
        c(w2, "q2.wf"), c(s2, "q2.s"), c(zp2, "q2.zp"),
        c(q3, "q3.w"), c(np.array(0.3, np.float32), "q3.s"), c(np.array(0, np.int8), "q3.zp"),
    ]
    n = helper.make_node
    nodes = [
        n("QuantizeLinear", ["x", "in.s", "in.zp"], ["xq"], name="x_q"),
        n("DequantizeLinear", ["xq", "in.s", "in.zp"], ["xdq"], name="x_dq"),
        n("DequantizeLinear", ["q1.w", "q1.s", "q1.zp"], ["w1"], name="q1_w_dq"),
        n("DequantizeLinear", ["q1.b", "q1.bs"], ["b1"], name="q1_b_dq"),
        n("Conv", ["xdq", "w1", "b1"], ["c1"], name="qconv1", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("QuantizeLinear", ["r1", "out.s", "out.zp"], ["r1q"], name="r1_q"),
        n("DequantizeLinear", ["r1q", "out.s", "out.zp"], ["r1dq"], name="r1_dq"),
        n("QuantizeLinear", ["q2.wf", "q2.s", "q2.zp"], ["w2q"], name="q2_w_q", axis=0),
        n("DequantizeLinear", ["w2q", "q2.s", "q2.zp"], ["w2"], name="q2_w_dq", axis=0),
        n("Conv", ["r1dq", "w2"], ["c2"], name="qconv2"),
        n("DequantizeLinear", ["q3.w", "q3.s", "q3.zp"], ["w3"], name="q3_w_dq"),
        n("Conv", ["c2", "w3"], ["y"], name="qconv3"),
    ]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    return model, q1


def test_qdq_bits_shifts_and_integer_zeros():
    model, q1 = _qdq_model()
    onnx.checker.check_model(model)
    rows = {c.name: c for c in inspect_model(model).candidates}
    d1 = rows["qconv1"].details
    assert d1["weight_shape"] == [4, 2, 3, 3] and d1["params"] == 72 + 4
    assert d1["zeros"] == int(np.sum(q1 == 0))
    # int8 values in [-5, 5] with zero point 0: a symmetric 4-bit weight in an int8 carrier
    assert (d1["bits"], d1["shift"], d1["in_shift"], d1["out_shift"]) == (4, 7, 4, 5)
    d2 = rows["qconv2"].details
    # Oracle: QuantizeLinear per output channel, round half to even, zero point 3.
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "q2.wf"))
    q2 = np.clip(np.rint(w2 / np.array([2.0**-6, 2.0**-8]).reshape(2, 1, 1, 1)) + 3, -128, 127)
    assert d2["zeros"] == int(np.sum(q2 == 3)) >= 1
    assert (d2["bits"], d2["shift"], d2["in_shift"]) == (8, "6..8", 5)  # zero point 3: the carrier's bits
    assert "out_shift" not in d2
    d3 = rows["qconv3"].details
    assert d3["shift"] is None and "not a power of two" in rows["qconv3"].reason
    summary = inspect_model(model).summary
    assert summary["quantized_layers"] == 3
    # Scales and zero points are not parameters; the int32 bias is.
    assert summary["model_params"] == 72 + 4 + 8 + 4


def test_qdq_model_runs_in_onnxruntime():
    pytest.importorskip("onnxruntime")
    from onnxsq.runtime import make_session

    model, _ = _qdq_model()
    y = make_session(model).run(None, {"x": np.ones((1, 2, 4, 4), np.float32)})[0]
    assert y.shape == (1, 2, 4, 4)


@pytest.mark.parametrize("name,layers", [("jacintonet_seg", 14), ("digits_cnn", 4), ("small_cls_torch", 8)])
def test_sample_models_totals_match_their_initializers(name, layers, sample_model):
    path = sample_model(name)
    model = onnx.load(str(path))
    report = inspect_model(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
    assert report.summary["layers"] == layers
    assert report.summary["weight_params"] == sum(inits[w].size for w in weights)
    assert report.summary["weight_zeros"] == sum(int(np.sum(inits[w] == 0)) for w in weights)


@pytest.mark.parametrize("name", ["jacintonet_seg", "small_cls_torch_op17"])
def test_totals_agree_with_onnxsq_sparsity(name, sample_model):
    """inspect, threshold and training must print the same sparsity numbers for the same model."""
    from onnxsq import sparsity

    model = onnx.load(str(sample_model(name)))
    # Make it sparse first, so the comparison is not 0 == 0.
    for t in model.graph.initializer:
        if t.name.endswith("weight"):
            w = numpy_helper.to_array(t).copy()
            w[np.abs(w) < np.quantile(np.abs(w), 0.6)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    conv, every, _ = sparsity.standard_totals(model)
    s = inspect_model(model).summary
    assert (s["conv_weight_params"], s["conv_weight_zeros"], s["conv_sparsity_denominator"]) == (
        conv.params, conv.zeros, conv.label)
    assert (s["weight_params"], s["weight_zeros"], s["sparsity_denominator"]) == (
        every.params,
        every.zeros,
        every.label,
    )
    assert s["sparsity"] == pytest.approx(every.zero_fraction) and s["sparsity"] > 0.5


def _digits_calib(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("weight_bits, bits", [(4, 8), (3, 8), (4, 4), (8, 8)])
def test_fewer_bit_quantized_models_report_their_bits(weight_bits, bits, sample_model, tmp_path):
    """A 4-bit weight in an int8 carrier is reported as 4 bits (values in [-7, 7]); 4-bit activations
    (a Clip before each QuantizeLinear) keep their out_shift column."""
    pytest.importorskip("onnxruntime")
    import onnxsq
    from onnxsq.params import params_from_model
    from onnxsq.passes.quantize import QuantizeConfig

    np.savez(tmp_path / "c.npz", _digits_calib())
    model, _ = onnxsq.quantize(str(sample_model("digits_cnn")), tmp_path / "c.npz",
                               config=QuantizeConfig(bits=bits, weight_bits=weight_bits))
    rows = {c.name: c.details for c in inspect_model(model).candidates if c.action != "skipped"}
    assert rows
    params = params_from_model(model)
    for name, d in rows.items():
        assert d["bits"] == weight_bits, (name, d)
        assert "in_shift" in d and "out_shift" in d, (name, d)
    assert {p.bits for p in params.values() if p.kind == "weight"} == {weight_bits}
