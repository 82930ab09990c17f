"""quantize's activation carrier (QuantizeConfig.carrier): signed activations as uint8 at zero point 128
("uint8", the default) hold the same integers as int8 at zero point 0 ("native"), and let onnxruntime
fuse every layer into its integer kernels (it needs one type across a layer's input and output)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import pytest
from builders import Builder
from onnx import numpy_helper

import onnxsq.passes.quantize.ptq as ptq
from onnxsq.errors import InvalidOptionError
from onnxsq.params import TensorQuant, params_from_model
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.insert import insert_qdq

ort = pytest.importorskip("onnxruntime")


def _net() -> onnx.ModelProto:
    """Conv-Relu (unsigned) → Conv (signed, linear), added to the Relu output shifted by a constant →
    Conv-Relu: the second conv reads uint8 and writes a signed tensor."""
    b = Builder(seed=3)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    lin = b.conv(r, 8, 8)
    shifted = b.const_op("Add", r, np.linspace(-0.5, 0.5, 8, dtype=np.float32).reshape(8, 1, 1))
    out = b.node("Relu", [b.conv(b.node("Add", [lin, shifted]), 8, 4)])
    return b.model({"x": [1, 3, 8, 8]}, [out])


def _feeds(n: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _session(model: onnx.ModelProto, level, optimized: str | None = None):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _both():
    cfg = dict(report_samples=0, bias_correction=False)
    u8, _ = quantize(_net(), _feeds(), config=QuantizeConfig(carrier="uint8", **cfg))
    # the native carrier writes the ReLU'd tensor's per-channel shift as a depthwise Conv (quantize.shift_conv);
    # uint8's QLinearAdd takes the Add as it is: the same net is compared without that rewrite
    with mock.patch.object(ptq, "shifts_as_convs", lambda *a: 0):
        native, _ = quantize(_net(), _feeds(), config=QuantizeConfig(carrier="native", **cfg))
    return u8, native


def test_the_uint8_carrier_holds_the_same_integers():
    u8, native = _both()
    onnx.checker.check_model(u8)
    inits = {i.name: numpy_helper.to_array(i) for i in u8.graph.initializer}
    zps = [inits[n.input[2]] for n in u8.graph.node if n.op_type == "QuantizeLinear"]
    assert {(z.dtype.name, int(z)) for z in zps} == {("uint8", 0), ("uint8", 128)}  # signed ones offset
    # weights stay int8 at zero point 0; the Add's constant joins its group's carrier, offset
    weights = [inits[n.input[0]] for n in u8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert {w.dtype.name for w in weights} == {"int8", "int32", "uint8"}
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for feed in _feeds(3):
        a, b = _session(u8, level).run(None, feed)[0], _session(native, level).run(None, feed)[0]
        np.testing.assert_array_equal(a, b)  # (q + 128 - 128) * 2^-s == q * 2^-s exactly


def _float_compute(model: onnx.ModelProto, tmp_path, tag: str) -> tuple[int, int]:
    """(Conv and Add left float, integer kernels) in the graph onnxruntime runs."""
    path = str(tmp_path / f"{tag}.opt.onnx")
    _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    return sum(ops.count(o) for o in ("Conv", "FusedConv", "Add")), sum(o.startswith("QLinear") for o in ops)


def test_one_type_lets_onnxruntime_fuse_every_layer(tmp_path):
    u8, native = _both()
    assert _float_compute(u8, tmp_path, "u8") == (0, 5)  # 3 QLinearConv, 2 QLinearAdd
    floats, fused = _float_compute(native, tmp_path, "native")
    # the Add of uint8 and int8 (the Relu output and its int8 constant) stays float between DQs and a Q
    assert floats >= 1 and fused < 5


def test_parameters_read_back_signed_with_their_shifts():
    u8, native = _both()
    a, b = params_from_model(u8), params_from_model(native)
    assert set(a) == set(b)
    for name, p in b.items():
        assert (a[name].signed, a[name].shift, a[name].bits) == (p.signed, p.shift, p.bits), name
    assert any(p.signed and p.kind == "activation" for p in a.values())


def test_insert_offsets_only_signed_activations_of_eight_bits_or_fewer():
    b = Builder(seed=1)
    out = b.conv("x", 3, 4)
    model = b.model({"x": [1, 3, 8, 8]}, [out])
    w = model.graph.node[0].input[1]
    params = {"x": TensorQuant("x", "activation", 4, True, 3), w: TensorQuant(w, "weight", 8, True, 6),
              out: TensorQuant(out, "activation", 8, False, 4)}
    q = insert_qdq(model, params, offset=True)
    onnx.checker.check_model(q)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zp = {n.name: inits[n.input[2]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    x_zp, w_zp, out_zp = zp["x_QuantizeLinear"], zp[f"{w}_DequantizeLinear"], zp[f"{out}_QuantizeLinear"]
    assert x_zp.dtype == np.uint8 and x_zp == 128  # a signed 4-bit input: offset, its Clip kept
    assert "Clip" in [n.op_type for n in q.graph.node]
    assert w_zp.dtype == np.int8 and w_zp == 0 and out_zp.dtype == np.uint8 and out_zp == 0
    x = np.random.default_rng(2).uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(_session(q, level).run(None, {"x": x})[0],
                                  _session(insert_qdq(model, params), level).run(None, {"x": x})[0])


def test_an_unknown_carrier_is_refused():
    with pytest.raises(InvalidOptionError, match="--carrier must be one of uint8, native"):
        QuantizeConfig(carrier="int4").validate()
