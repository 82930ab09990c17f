"""quantize: placement, power-of-two scales, exact weights/biases, zeros, fusion in onnxruntime, fidelity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.calibration import pow2
from onnxsq.errors import InvalidOptionError
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.runtime import make_session


def build_net(opset: int = 13, *, sigmoid: bool = False) -> onnx.ModelProto:
    """Conv-Relu → Conv (signed) → Add → Relu → MaxPool → [pool, Conv-Relu] Concat → GAP → Flatten → Gemm."""
    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32)
    w2[rng.random(w2.shape) < 0.5] = 0.0  # sparse: exact zeros must survive
    inits = {
        "w1": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "b1": rng.normal(0, 0.1, 4),
        "w2": w2, "b2": rng.normal(0, 0.1, 4),
        "w3": (rng.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32), "b3": rng.normal(0, 0.1, 4),
        "wf": (rng.standard_normal((5, 8)) * 0.5).astype(np.float32), "bf": rng.normal(0, 0.1, 5),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        n("Add", ["r1", "c2"], ["a"], name="add"),
        n("Relu", ["a"], ["ra"], name="relu_add"),
        n("MaxPool", ["ra"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p", "w3", "b3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        n("Relu", ["c3"], ["r3"], name="relu3"),
        n("Concat", ["p", "r3"], ["cat"], name="concat", axis=1),
        n("GlobalAveragePool", ["cat"], ["g"], name="gap"),
        n("Flatten", ["g"], ["f"], name="flatten"),
        n("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    if sigmoid:
        nodes[-1].output[0] = "pre"
        nodes.append(n("Sigmoid", ["pre"], ["logits"], name="sigmoid"))
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = {11: 6, 13: 7, 21: 10}[opset]
    return model


def feeds(count: int = 24, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def qdq_nodes(model: onnx.ModelProto):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return inits, [nd for nd in model.graph.node if nd.op_type in ("QuantizeLinear", "DequantizeLinear")]


def dq_of(model: onnx.ModelProto, float_name: str) -> onnx.NodeProto:
    return next(nd for nd in model.graph.node if nd.op_type == "DequantizeLinear"
                and nd.input[0] == f"{float_name}_quantized")


def sqnr(a: np.ndarray, b: np.ndarray) -> float:
    return pow2.sqnr_db(float(np.sum(a.astype(np.float64) ** 2)), float(np.sum((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize(("method", "carrier"), [("minmax", "native"), ("ema", "uint8"), ("percentile", "native"),
                                                 ("mse", "uint8")])
def test_scales_are_powers_of_two_and_zero_points_zero(method, carrier):
    """Zero points 0; with the uint8 carrier a signed activation sits at zero point 128 (the same integers)."""
    model = build_net()
    q, report = quantize(model, feeds(), config=QuantizeConfig(method=method, carrier=carrier))
    onnx.checker.check_model(q)
    inits, nodes = qdq_nodes(q)
    assert len(nodes) > 10
    offset = 0
    for nd in nodes:
        scale = inits[nd.input[1]]
        mant, _ = np.frexp(scale)
        assert np.all(mant == 0.5), (nd.name, scale)
        zp = inits[nd.input[2]]
        if carrier == "uint8" and zp.dtype == np.uint8 and np.any(zp):
            assert np.all(zp == 128)
            offset += 1
        else:
            assert np.all(zp == 0)
    assert (offset > 0) == (carrier == "uint8")
    assert q.ir_version == model.ir_version and q.opset_import[0].version == 13
    assert report.summary["method"] == method


def test_weights_bias_and_activation_types():
    # the weights as given (scale alignment would carry factors in them: tests/passes/test_quantize_align.py)
    q, report = quantize(build_net(), feeds(), config=QuantizeConfig(align_scales=False))
    inits, _ = qdq_nodes(q)
    assert inits["w1_quantized"].dtype == np.int8 and inits["b1_quantized"].dtype == np.int32
    # bias scale == input scale * weight scale exactly, so requantization is a shift
    for w, b, x in (("w1", "b1", "input"), ("w2", "b2", "r1"), ("w3", "b3", "p"), ("wf", "bf", "f")):
        dq_w = dq_of(q, w)
        sw = inits[dq_w.input[1]]
        sb = inits[dq_of(q, b).input[1]]
        qx = next(nd for nd in q.graph.node if nd.op_type == "QuantizeLinear" and nd.input[0] in (x, f"{x}_prequant"))
        assert np.array_equal(sb, inits[qx.input[1]] * sw)  # per output channel (the default) or per tensor
        w_float = numpy_helper.to_array(next(i for i in build_net().graph.initializer if i.name == w))
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1) if sw.ndim else None
        assert np.array_equal(inits[f"{w}_quantized"],
                              pow2.quantize(w_float, pow2.shift_of(sw), 8, True, symmetric=True, axis=axis))
    # after ReLU: unsigned; the signed conv2 output feeds Add: int8 at zero point 0 (the default, native
    # carrier), uint8 at zero point 128 with the uint8 carrier
    zp = {nd.input[0]: inits[nd.input[2]] for nd in q.graph.node if nd.op_type == "QuantizeLinear"}
    assert zp["r1_prequant"].dtype == np.uint8 and zp["r1_prequant"] == 0
    assert zp["c2_prequant"].dtype == np.int8 and zp["c2_prequant"] == 0
    u8, _ = quantize(build_net(), feeds(), config=QuantizeConfig(carrier="uint8"))
    zp = {nd.input[0]: numpy_helper.to_array(i) for nd in u8.graph.node if nd.op_type == "QuantizeLinear"
          for i in u8.graph.initializer if i.name == nd.input[2]}
    assert zp["c2_prequant"].dtype == np.uint8 and zp["c2_prequant"] == 128
    layers = {c.name: c for c in report.candidates}
    assert layers["relu1"].action == "fused" and layers["conv1"].details["tensor"] == "r1"
    assert layers["conv1"].details["signed"] is False and "sqnr_db" in layers["conv1"].details


def test_exact_zeros_survive():
    model = build_net()
    q, _ = quantize(model, feeds(), config=QuantizeConfig(align_scales=False))  # r1 as the float model has it
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    q2 = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}["w2_quantized"]
    assert np.all(q2[w2 == 0] == 0)
    # and the dequantized activations keep exact zeros of ReLU outputs
    sess = make_session(_with_output(q, "r1"))
    fsess = make_session(_with_output(model, "r1"))
    x = feeds(1)[0]
    assert np.all(sess.run(["r1"], x)[0][fsess.run(["r1"], x)[0] == 0] == 0)


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def test_concat_and_shape_ops_share_one_scale():
    q, _ = quantize(build_net(), feeds())
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    scale = {nd.input[0]: float(inits[nd.input[1]]) for nd in q.graph.node if nd.op_type == "QuantizeLinear"}
    assert scale["p_prequant"] == scale["r3_prequant"] == scale["cat_prequant"]  # concat: one scale
    assert scale["ra_prequant"] == scale["p_prequant"]  # MaxPool shares its input's
    assert scale["g_prequant"] == scale["f_prequant"]  # Flatten shares the pool's
    # an average is narrower than its input: GlobalAveragePool has its own, finer (or equal) scale
    assert scale["g_prequant"] <= scale["cat_prequant"]


def test_fidelity_and_top1_on_calibration_data():
    model = build_net()
    data = feeds(32)
    q, report = quantize(model, data, config=QuantizeConfig(method="minmax", report_samples=32))
    fs, qs = make_session(model), make_session(q)
    a = np.concatenate([fs.run(None, f)[0] for f in data])
    b = np.concatenate([qs.run(None, f)[0] for f in data])
    assert sqnr(a, b) > 25.0
    assert report.summary["output_sqnr_db"] == pytest.approx(sqnr(a, b), abs=0.05)
    assert report.summary["top1_agreement"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))
    assert report.summary["top1_agreement"] >= 0.9


def test_onnxruntime_fuses_qdq_into_integer_kernels(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    q, _ = quantize(build_net(), feeds())
    src, opt = tmp_path / "q.onnx", tmp_path / "q.opt.onnx"
    src.write_bytes(q.SerializeToString())
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    ops = [nd.op_type for nd in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 3, ops
    assert "QGemm" in ops or "QLinearMatMul" in ops or "MatMulIntegerToFloat" in ops, ops
    assert "QLinearAdd" in ops and "QLinearConcat" in ops, ops
    assert "Conv" not in ops


def test_per_channel_weights_and_biases():
    q, report = quantize(build_net(), feeds(), config=QuantizeConfig(per_channel=True, align_scales=False))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    dq = dq_of(q, "w1")
    assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    sw, sb = inits[dq.input[1]], inits[dq_of(q, "b1").input[1]]
    assert sw.shape == (4,) and np.all(np.frexp(sw)[0] == 0.5)
    assert np.array_equal(sb, sw * inits[next(nd for nd in q.graph.node if nd.op_type == "QuantizeLinear"
                                              and nd.input[0] == "input").input[1]])
    w1 = numpy_helper.to_array(next(i for i in build_net().graph.initializer if i.name == "w1"))
    assert np.array_equal(inits["w1_quantized"], pow2.quantize(w1, pow2.shift_of(sw), 8, True, symmetric=True, axis=0))
    # Gemm transB=1: output channels on axis 0
    assert next(a.i for a in dq_of(q, "wf").attribute if a.name == "axis") == 0
    assert report.summary["per_channel"] is True


def test_opset_raised_only_when_needed():
    q, report = quantize(build_net(opset=11), feeds(), config=QuantizeConfig(per_channel=False))
    assert q.opset_import[0].version == 11 and "opset_raised" not in report.summary
    q, report = quantize(build_net(opset=11), feeds())  # per-channel weights (the default) need opset 13
    assert q.opset_import[0].version == 13 and report.summary["opset_raised"].startswith("11 -> 13")
    assert q.ir_version <= 10
    make_session(q).run(None, feeds(1)[0])


def test_four_bits_clip_and_symmetric_weights():
    q, report = quantize(build_net(), feeds(), config=QuantizeConfig(bits=4))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert np.abs(inits["w1_quantized"]).max() <= 7
    clips = [nd for nd in q.graph.node if nd.op_type == "Clip"]
    assert clips, "fewer bits than the int8 carrier need a Clip before QuantizeLinear"
    out = make_session(_with_output(q, "r1")).run(["r1"], feeds(1)[0])[0]
    scale = float(inits[dq_of_activation(q, "r1").input[1]])
    assert np.all(out <= 15 * scale) and np.all(out >= 0)
    assert report.summary["bits"] == 4


def dq_of_activation(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(nd for nd in model.graph.node if nd.op_type == "DequantizeLinear" and nd.output[0] == name)


def test_more_than_8_bits_needs_opset_21():
    with pytest.raises(InvalidOptionError, match="opset 21"):
        quantize(build_net(), feeds(), config=QuantizeConfig(bits=12))


def test_sixteen_bit_carrier_on_opset_21():
    q, _ = quantize(build_net(opset=21), feeds(), config=QuantizeConfig(bits=12, method="minmax"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits["w1_quantized"].dtype == np.int16 and np.abs(inits["w1_quantized"]).max() <= 2047
    try:
        sess = make_session(q)
    except Exception as exc:  # noqa: BLE001 - an old runtime without 16-bit QDQ kernels
        pytest.skip(f"this onnxruntime cannot run 16-bit QDQ: {str(exc).splitlines()[0]}")
    a = make_session(build_net(opset=21)).run(None, feeds(1)[0])[0]
    assert sqnr(a, sess.run(None, feeds(1)[0])[0]) > 45


def test_exclude_and_unsupported_ops_stay_float_with_reasons():
    q, report = quantize(build_net(sigmoid=True), feeds(), config=QuantizeConfig(exclude=("conv3",)))
    by = {c.name: c for c in report.candidates}
    assert by["conv3"].action == "skipped" and "--exclude" in by["conv3"].reason
    assert by["sigmoid"].action == "skipped" and "Sigmoid" in by["sigmoid"].reason
    conv3 = next(nd for nd in q.graph.node if nd.name == "conv3")
    assert conv3.input[1] == "w3"  # float weight, untouched
    assert "concat" in by and by["concat"].action == "quantized"


def test_batchnorm_is_folded_first(conv_model):
    model = conv_model()
    q, report = quantize(model, [{"input": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}])
    assert report.summary["batchnorm_folded_first"] == 1
    assert not any(nd.op_type == "BatchNormalization" for nd in q.graph.node)
    assert any(nd.op_type == "BatchNormalization" for nd in model.graph.node)  # input untouched


def test_params_out_then_params_in(tmp_path):
    from onnxsq.params import read_params, write_params

    path = tmp_path / "p.json"
    q1, _ = quantize(build_net(), feeds(), params_out=path)
    params = read_params(path)
    assert params["r1"].kind == "activation" and params["w1"].kind == "weight" and params["b1"].kind == "bias"
    q2, report = quantize(build_net(), None, params=path)  # every tensor given: no calibration needed
    assert q2.SerializeToString() == q1.SerializeToString()
    assert any("SQNR not measured" in w for w in report.warnings)
    # a partial file overrides its tensors and calibrates the rest
    partial = {"r1": params["r1"]}
    partial["r1"].shift = params["r1"].shift - 1
    write_params(partial, tmp_path / "partial.json")
    q3, _ = quantize(build_net(), feeds(), params=tmp_path / "partial.json")
    inits = {i.name: numpy_helper.to_array(i) for i in q3.graph.initializer}
    assert pow2.shift_of(inits[dq_of_activation(q3, "r1").input[1]]) == params["r1"].shift
    with pytest.raises(InvalidOptionError, match="--calib is required"):
        quantize(build_net(), None, params=tmp_path / "partial.json")


def test_given_activations_still_calibrate_bias_correction(tmp_path):
    """Activations all given, weights not: the calibration data still feeds bias correction's input
    means (every sample), with or without the report; with everything given and the report off,
    the data is not read at all."""
    from onnxsq.params import read_params

    path = tmp_path / "p.json"
    q1, _ = quantize(build_net(), feeds(), params_out=path, config=QuantizeConfig(report_samples=0))
    params = read_params(path)
    acts = {k: v for k, v in params.items() if v.kind == "activation"}
    q2, rep2 = quantize(build_net(), feeds(), params=acts, config=QuantizeConfig(report_samples=0))
    assert rep2.summary["calibration_samples"] > 0
    assert q2.SerializeToString() == q1.SerializeToString()
    q3, rep3 = quantize(build_net(), feeds(), params=path, config=QuantizeConfig(report_samples=0))
    assert "not read" in rep3.summary["calibration_data"]
    assert q3.SerializeToString() == q1.SerializeToString()


def test_sample_models_keep_accuracy(sample_model):
    path = sample_model("jacintonet_seg")
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    data = [{"input": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(8)]
    q, report = quantize(path, data, config=QuantizeConfig(report_samples=8))
    assert report.summary["output_sqnr_db"] > 20.0
    assert report.summary["top1_agreement"] > 0.95
    # opset 11 → 13 for per-channel weights (the default), with the IR version that opset needs
    assert report.summary["opset_raised"].startswith("11 -> 13") and q.ir_version == max(model.ir_version, 7)


def test_clipped_fraction_from_statistics_or_counted(tmp_path):
    """minmax clips nothing (known from the statistics, over every calibration sample); a given shift
    too fine for the data is counted in the report's graph, on the report samples."""
    from onnxsq.params import read_params, write_params

    q, report = quantize(build_net(), feeds(), params_out=tmp_path / "p.json", config=QuantizeConfig(report_samples=3))
    assert all(c.details.get("clipped") == 0.0 for c in report.candidates if "sqnr_db" in c.details)
    params = read_params(tmp_path / "p.json")
    params["r1"].shift += 2  # a quarter of the range
    write_params({"r1": params["r1"]}, tmp_path / "r1.json")
    data = feeds()
    _, rep = quantize(build_net(), data, params=tmp_path / "r1.json", config=QuantizeConfig(report_samples=3))
    r1 = next(c for c in rep.candidates if c.details.get("tensor") == "r1")
    sess = make_session(_with_output(build_net(), "r1"))
    vals = np.concatenate([sess.run(["r1"], x)[0] for x in data[:3]])
    limit = (255 + 0.5) * 2.0 ** -params["r1"].shift
    assert (
        r1.details["clipped"] == pytest.approx(np.count_nonzero(vals > limit) / vals.size) and r1.details["clipped"] > 0
    )


def test_defaults_are_per_channel_auto_and_equalized():
    cfg = QuantizeConfig()
    assert cfg.per_channel and cfg.method == "auto" and cfg.equalize
    q, report = quantize(build_net(), feeds())
    w1 = dq_of(q, "w1")
    assert any(a.name == "axis" for a in w1.attribute)  # one shift per output channel
    assert "equalized_pairs" in report.summary
    onnx.checker.check_model(q)


def test_per_channel_falls_back_to_per_tensor_when_the_opset_cannot_be_raised(monkeypatch):
    from onnx import version_converter

    def refuse(model, target):
        if target >= 13:
            raise RuntimeError("no adapter for this op")
        return model

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    q, report = quantize(build_net(opset=11), feeds())
    assert q.opset_import[0].version == 11 and report.summary.get("per_channel_fallback") is True
    assert any("per tensor" in w and "no adapter" in w for w in report.warnings)
    assert not any(a.name == "axis" for a in dq_of(q, "w1").attribute)
    make_session(q, optimize=True).run(None, feeds(1)[0])


def test_a_parameters_file_reproduces_the_equalized_run(tmp_path):
    """Equalization is deterministic: a --params-out file made with it gives the same model again."""
    first, _ = quantize(build_net(), feeds(), params_out=tmp_path / "p.json")
    again, _ = quantize(build_net(), feeds(), params=tmp_path / "p.json")
    assert first.SerializeToString() == again.SerializeToString()
