"""fold-batchnorm's affine folds: constant Mul/Add/Sub/Div after a layer go into its weights and bias.

Each test checks which nodes remain, onnx.checker, the report, and numerics against onnxruntime
(graph optimizations off; onnx's reference evaluator for float64 Conv) with explicit tolerances.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime")

from builders import Builder, feeds_for, ops, run

from onnxsq.passes.fold_batchnorm import fold_batchnorm

TOL = {np.float16: (1e-2, 1e-2), np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-13)}  # rtol, atol
X = [1, 2, 5, 5]


def fold(model: onnx.ModelProto, feeds: dict[str, np.ndarray], dtype=np.float32, **kw):
    """Fold, check the model and the numbers (atol relative to the output's scale for float16)."""
    before = model.SerializeToString()
    folded, report = fold_batchnorm(model, **kw)
    assert model.SerializeToString() == before, "the input model was mutated"
    onnx.checker.check_model(folded, full_check=True)
    rtol, atol = TOL[dtype]
    for r, g in zip(run(model, feeds), run(folded, feeds)):
        assert r.shape == g.shape and r.dtype == g.dtype
        scale = max(float(np.abs(r.astype(np.float64)).max()), 1.0) if dtype == np.float16 else 1.0
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=rtol, atol=atol * scale)
    return folded, report


def affine(report) -> list[tuple[str, str, str]]:
    """(op, action, pattern) of the affine entries, in report order."""
    return [(c.op, c.action, c.details.get("pattern", "")) for c in report.candidates
            if c.op != "BatchNormalization"]


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_conv_mul_add_per_channel_folds():
    b = Builder(1)
    y = b.const_op("Mul", b.conv("x", 2, 3), b.rng.uniform(0.5, 1.5, (3, 1, 1)))
    y = b.const_op("Add", y, b.rng.normal(0, 1, (3, 1, 1)))
    folded, report = fold(b.model({"x": X}, [y]), feeds_for(X))
    assert ops(folded) == ["Conv"]
    assert affine(report) == [("Mul", "folded", "Conv→Mul→Add"), ("Add", "folded", "Conv→Mul→Add")]
    assert report.summary["affine_nodes"] == 2 and report.summary["affine_folded"] == 2
    assert report.summary["affine_left"] == 0


def test_bias_free_conv_add_becomes_its_bias():
    b = Builder(2)
    y = b.const_op("Add", b.conv("x", 2, 3, bias=False), b.rng.normal(0, 1, (1, 3, 1, 1)), const_first=True)
    folded, _ = fold(b.model({"x": X}, [y]), feeds_for(X))
    assert ops(folded) == ["Conv"] and len(folded.graph.node[0].input) == 3


def test_conv_scalar_mul_add_folds():
    """paddle2onnx: Conv → Mul(scalar) → Add(scalar); an all-ones shape of lower rank is a scalar too."""
    b = Builder(3)
    y = b.const_op("Mul", b.conv("x", 2, 4), np.array(0.75))
    y = b.const_op("Add", y, np.full((1, 1, 1), 0.3))
    y = b.const_op("Sub", y, np.array([0.1]))
    y = b.const_op("Div", y, np.array(1.5))
    folded, report = fold(b.model({"x": X}, [y]), feeds_for(X))
    assert ops(folded) == ["Conv"] and [a for _, a, _ in affine(report)] == ["folded"] * 4


def test_constant_minus_conv_negates():
    b = Builder(4)
    y = b.const_op("Sub", b.conv("x", 2, 3), b.rng.normal(0, 1, (3, 1, 1)), const_first=True)
    folded, _ = fold(b.model({"x": X}, [y]), feeds_for(X))
    assert ops(folded) == ["Conv"]


def test_depthwise_conv_folds():
    b = Builder(5)
    y = b.const_op("Mul", b.conv("x", 4, 4, group=4), b.rng.uniform(0.5, 1.5, (4, 1, 1)))
    y = b.const_op("Add", y, b.rng.normal(0, 1, (4, 1, 1)))
    folded, _ = fold(b.model({"x": [1, 4, 5, 5]}, [y]), feeds_for([1, 4, 5, 5]))
    assert ops(folded) == ["Conv"]


def test_convtranspose_mul_folds_per_group():
    b = Builder(6)
    y = b.conv("x", 4, 6, group=2, op="ConvTranspose", strides=[2, 2])
    y = b.const_op("Mul", y, b.rng.uniform(0.5, 1.5, (6, 1, 1)))
    folded, _ = fold(b.model({"x": [1, 4, 3, 3]}, [y]), feeds_for([1, 4, 3, 3]))
    assert ops(folded) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_mul_sub_folds(trans_b):
    b = Builder(7)
    w = b.const("w", b.weight((5, 4) if trans_b else (4, 5), 4))
    y = b.node("Gemm", ["x", w, b.const("c", b.rng.normal(0, 1, 5))], transB=trans_b, beta=0.5)
    y = b.const_op("Mul", y, b.rng.uniform(0.5, 1.5, 5))
    y = b.const_op("Sub", y, b.rng.normal(0, 1, (1, 5)), const_first=True)
    folded, _ = fold(b.model({"x": [3, 4]}, [y]), feeds_for([3, 4]))
    assert ops(folded) == ["Gemm"]


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("bias_shape", [(5,), (1, 5)])
def test_2d_matmul_add_becomes_gemm(opset, bias_shape):
    b = Builder(8)
    y = b.node("MatMul", ["x", b.const("w", b.weight((4, 5), 4))])
    y = b.const_op("Mul", y, b.rng.uniform(0.5, 1.5, (1, 5)))
    y = b.const_op("Add", y, b.rng.normal(0, 1, bias_shape), const_first=True)
    folded, report = fold(b.model({"x": [3, 4]}, [y], opset=opset), feeds_for([3, 4]))
    assert ops(folded) == ["Gemm"] and len(folded.graph.node[0].input) == 3
    assert {a.name: a for a in folded.graph.node[0].attribute}.keys() <= {"transA", "transB", "alpha", "beta"}
    assert affine(report) == [("Mul", "folded", "MatMul→Mul→Add"), ("Add", "folded", "MatMul→Mul→Add")]


def test_2d_matmul_mul_alone_stays_matmul():
    b = Builder(9)
    y = b.const_op("Div", b.node("MatMul", ["x", b.const("w", b.weight((4, 5), 4))]), np.array(4.0))
    folded, _ = fold(b.model({"x": [3, 4]}, [y]), feeds_for([3, 4]))
    assert ops(folded) == ["MatMul"]


def test_rank3_matmul_mul_folds_and_its_add_stays():
    b = Builder(10)
    y = b.const_op("Mul", b.node("MatMul", ["x", b.const("w", b.weight((4, 5), 4))]), np.array(0.5))
    y = b.const_op("Add", y, b.rng.normal(0, 1, 5))
    model = b.model({"x": [2, 3, 4]}, [y])
    folded, report = fold(model, feeds_for([2, 3, 4]))
    assert ops(folded) == ["MatMul", "Add"]
    assert affine(report) == [("Mul", "folded", "MatMul→Mul→Add"), ("Add", "skipped", "MatMul→Mul→Add")]
    assert report.candidates[-1].reason == "MatMul input of rank 3: Gemm is 2-D; the Add stays as the layer's bias"
    add = folded.graph.node[1]
    assert add.input[1] == model.graph.node[-1].input[1]  # its own bias constant, unchanged


def test_rank3_matmul_add_then_mul_keeps_one_scaled_add():
    b = Builder(11)
    y = b.const_op("Add", b.node("MatMul", ["x", b.const("w", b.weight((4, 5), 4))]), b.rng.normal(0, 1, 5))
    y = b.const_op("Mul", y, b.rng.uniform(0.5, 1.5, (1, 1, 5)))
    y = b.const_op("Sub", y, b.rng.normal(0, 1, 5))
    folded, report = fold(b.model({"x": [2, 3, 4]}, [y]), feeds_for([2, 3, 4]))
    assert ops(folded) == ["MatMul", "Add"]
    assert [(op, a) for op, a, _ in affine(report)] == [("Add", "folded"), ("Mul", "folded"), ("Sub", "skipped")]


def test_rank3_matmul_lone_add_is_left_as_it_is():
    b = Builder(12)
    y = b.const_op("Add", b.node("MatMul", ["x", b.const("w", b.weight((4, 5), 4))]), b.rng.normal(0, 1, 5))
    model = b.model({"x": [2, 3, 4]}, [y])
    folded, report = fold(model, feeds_for([2, 3, 4]))
    assert folded.graph.node == model.graph.node and affine(report)[0][1] == "skipped"


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float16_and_float64_weights_keep_their_dtype(dtype):
    b = Builder(13, dtype)
    y = b.const_op("Mul", b.conv("x", 2, 3), b.rng.uniform(0.5, 1.5, (3, 1, 1)))
    y = b.const_op("Add", y, b.rng.normal(0, 1, (3, 1, 1)))
    g = b.const_op("Add", b.node("Gemm", ["v", b.const("g", b.weight((4, 3), 4))]), b.rng.normal(0, 1, 3))
    folded, _ = fold(b.model({"x": X, "v": [2, 4]}, [y, g]), {**feeds_for(X, dtype), **feeds_for([2, 4], dtype,
                                                                                                  name="v")}, dtype)
    assert ops(folded) == ["Conv", "Gemm"]
    assert {v.dtype for v in inits(folded).values()} == {np.dtype(dtype)}


@pytest.mark.parametrize("how", ["constant-node", "identity"])
def test_constant_through_constant_node_or_identity(how):
    b = Builder(14, constant_nodes=how == "constant-node")
    c = b.const("c", b.rng.uniform(0.5, 1.5, (3, 1, 1)))
    if how == "identity":
        c = b.node("Identity", [c])
    y = b.node("Mul", [b.conv("x", 2, 3), c])
    folded, report = fold(b.model({"x": X}, [y]), feeds_for(X))
    assert ops(folded).count("Conv") == 1 and "Mul" not in ops(folded)
    assert affine(report)[0][1] == "folded"


def test_shared_weight_is_cloned_not_corrupted():
    b = Builder(15)
    w = b.const("w", b.weight((3, 2, 3, 3), 18))
    c1 = b.node("Conv", ["x", w], pads=[1] * 4)
    c2 = b.node("Conv", ["x", w], pads=[1] * 4)
    y = b.const_op("Mul", c1, b.rng.uniform(0.5, 1.5, (3, 1, 1)))
    model = b.model({"x": X}, [y, c2])
    folded, _ = fold(model, feeds_for(X))
    assert ops(folded) == ["Conv", "Conv"]
    assert np.array_equal(inits(folded)[w], inits(model)[w])
    assert folded.graph.node[0].input[1] != folded.graph.node[1].input[1]


def test_conv_bn_mul_add_folds_fully():
    b = Builder(16)
    y = b.bn(b.conv("x", 2, 3), 3)
    y = b.const_op("Mul", y, b.rng.uniform(0.5, 1.5, (3, 1, 1)))
    y = b.const_op("Add", y, b.rng.normal(0, 1, (1, 3, 1, 1)))
    folded, report = fold(b.model({"x": X}, [b.node("Relu", [y])]), feeds_for(X))
    assert ops(folded) == ["Conv", "Relu"]
    assert [c.action for c in report.candidates] == ["folded"] * 3
    assert report.summary["folded"] == 1 and report.summary["affine_folded"] == 2


def test_bn_replacement_folds_into_the_layer_after_all():
    """A BN too far behind its layer (over 8 constant nodes) becomes Mul+Add, which then fold too."""
    b = Builder(17)
    y = b.conv("x", 2, 3)
    for _ in range(9):
        y = b.const_op("Add", y, b.rng.normal(0, 1, (3, 1, 1)))
    folded, report = fold(b.model({"x": X}, [b.bn(y, 3)]), feeds_for(X))
    assert ops(folded) == ["Conv"]
    assert report.candidates[0].action == "replaced" and report.summary["affine_folded"] == 11


def test_no_fold_affine_leaves_them():
    b = Builder(18)
    y = b.const_op("Mul", b.conv("x", 2, 3), np.array(2.0))
    folded, report = fold(b.model({"x": X}, [y]), feeds_for(X), fold_affine=False)
    assert ops(folded) == ["Conv", "Mul"] and "affine_nodes" not in report.summary


# --- refused, each with its reason -----------------------------------------------------------------------

def refused(model: onnx.ModelProto, feeds, keep: list[str], why: str) -> None:
    folded, report = fold(model, feeds)
    assert ops(folded) == keep
    left = [c for c in report.candidates if c.action == "skipped"]
    assert left and all(why in c.reason for c in left), report.to_json()
    assert report.summary["affine_left"] == len(left)


def test_last_axis_constant_on_a_conv_is_refused():
    """[W] broadcasts along W of [N, C, H, W], even when W == C."""
    b = Builder(19)
    y = b.const_op("Mul", b.conv("x", 2, 3), b.rng.uniform(0.5, 1.5, 3))
    refused(b.model({"x": [1, 2, 3, 3]}, [y]), feeds_for([1, 2, 3, 3]), ["Conv", "Mul"],
            "constant of shape [3] is not per-channel")


def test_spatial_constant_is_refused():
    b = Builder(20)
    y = b.const_op("Add", b.conv("x", 2, 3), b.rng.normal(0, 1, (1, 1, 5, 5)))
    refused(b.model({"x": X}, [y]), feeds_for(X), ["Conv", "Add"], "constant of shape [1, 1, 5, 5] is not per-channel")


def test_constant_raising_the_rank_is_refused():
    b = Builder(21)
    y = b.const_op("Add", b.conv("x", 2, 3), np.full((1, 1, 1, 1, 1), 0.5))
    refused(b.model({"x": X}, [y]), feeds_for(X), ["Conv", "Add"], "more dimensions than the rank-4 output")


def test_layer_output_feeding_two_nodes_is_refused():
    b = Builder(22)
    c = b.conv("x", 2, 3)
    y = b.node("Add", [b.const_op("Mul", c, np.array(2.0)), b.node("Relu", [c])])
    refused(b.model({"x": X}, [y]), feeds_for(X), ["Conv", "Mul", "Relu", "Add"], "also feeds 1 other node(s)")


def test_layer_output_that_is_a_graph_output_is_refused():
    b = Builder(23)
    c = b.conv("x", 2, 3)
    y = b.const_op("Mul", c, np.array(2.0))
    refused(b.model({"x": X}, [c, y]), feeds_for(X), ["Conv", "Mul"], "is also a graph output")


def test_chain_stops_where_its_output_is_shared():
    b = Builder(24)
    m = b.const_op("Mul", b.conv("x", 2, 3), np.array(2.0))
    y = b.const_op("Add", m, np.array(1.0))
    folded, report = fold(b.model({"x": X}, [y, m]), feeds_for(X))
    assert ops(folded) == ["Conv", "Add"]
    assert [(op, a) for op, a, _ in affine(report)] == [("Mul", "folded"), ("Add", "skipped")]


def test_division_by_zero_is_refused():
    b = Builder(25)
    y = b.const_op("Div", b.conv("x", 2, 3), np.array([[[2.0]], [[0.0]], [[1.0]]]))
    refused(b.model({"x": X}, [y]), feeds_for(X), ["Conv", "Div"], "divides by zero")


def test_constant_divided_by_a_layer_is_refused():
    b = Builder(26)
    y = b.const_op("Div", b.conv("x", 2, 3), np.array(2.0), const_first=True)
    refused(b.model({"x": X}, [y]), feeds_for(X), ["Conv", "Div"], "c / x is not affine in x")


def test_non_constant_weight_is_refused():
    b = Builder(27)
    y = b.const_op("Mul", b.node("MatMul", ["x", "w_in"]), np.array(0.125))
    feeds = {**feeds_for([3, 4]), **feeds_for([4, 5], seed=2, name="w_in")}
    refused(b.model({"x": [3, 4], "w_in": [4, 5]}, [y]), feeds, ["MatMul", "Mul"], "weight of MatMul")


def test_matmul_add_before_opset_7_is_a_gemm_with_broadcast():
    """Opset 6: elementwise broadcasting follows broadcast/axis attributes, so only a 1-element
    constant folds, and Gemm's C broadcasts only with ``broadcast=1`` (onnxruntime runs no opset-6
    Add: numerics by onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    b = Builder(28)
    y = b.node("MatMul", ["x", b.const("w", b.weight((4, 5), 4))])
    y = b.node("Add", [y, b.const("c", np.array([0.5]))], broadcast=1)
    z = b.node("Mul", [y, b.const("s", b.rng.uniform(0.5, 1.5, 5))], broadcast=1)
    model = b.model({"x": [3, 4]}, [z], opset=6)
    folded, report = fold_batchnorm(model)
    onnx.checker.check_model(folded)
    assert ops(folded) == ["Gemm", "Mul"] and "only 1-element constants" in report.candidates[-1].reason
    gemm = folded.graph.node[0]
    assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute} == {"broadcast": 1}
    f = feeds_for([3, 4])
    ref, got = ReferenceEvaluator(model).run(None, f)[0], ReferenceEvaluator(folded).run(None, f)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_optimize_command_folds_affine_unless_told_not_to(run_cli, tmp_path):
    b = Builder(29)
    y = b.const_op("Add", b.const_op("Mul", b.conv("x", 2, 3, bias=False), np.array(0.5)), np.array(0.25))
    src = tmp_path / "m.onnx"
    onnx.save(b.model({"x": X}, [y]), str(src))
    for extra, want in (([], ["Conv"]), (["--no-fold-affine"], ["Conv", "Mul", "Add"])):
        out = tmp_path / f"out{len(extra)}.onnx"
        res = run_cli("optimize", src, "-o", out, "-q", *extra)
        assert res.code == 0, res.err
        assert ops(onnx.load(str(out))) == want


# --- quantize: folds first; a rank-3 MatMul's Add is its int32 bias ---------------------------------------

def _rank3_matmul_model() -> onnx.ModelProto:
    """x [2, 6, 8] → MatMul → Mul(scalar) → Add([5]) → Relu → MatMul → Add([1, 1, 3])."""
    b = Builder(30)
    y = b.const_op("Mul", b.node("MatMul", ["x", b.const("w", b.weight((8, 5), 8))]), np.array(0.5))
    y = b.node("Relu", [b.const_op("Add", y, b.rng.normal(0, 0.5, 5))])
    y = b.const_op("Add", b.node("MatMul", [y, b.const("w", b.weight((5, 3), 5))]), b.rng.normal(0, 0.5, (1, 1, 3)),
                   const_first=True)
    return b.model({"x": [2, 6, 8]}, [y])


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_takes_a_rank3_matmul_add_as_its_int32_bias(per_channel):
    import onnxruntime as ort

    from onnxsq.passes.quantize import QuantizeConfig, quantize

    model = _rank3_matmul_model()
    rng = np.random.default_rng(3)
    calib = [{"x": (rng.standard_normal((2, 6, 8)) + 1.0).astype(np.float32)} for _ in range(16)]
    q, report = quantize(model, calib, config=QuantizeConfig(per_channel=per_channel))
    onnx.checker.check_model(q)
    assert report.summary["affine_folded_first"] == 1 and report.summary["bias_corrected"] == 2
    assert not [w for w in report.warnings if "could not be folded" in w], report.warnings
    consts = inits(q)
    producers = {o: nd for nd in q.graph.node for o in nd.output}
    dqs = {nd.output[0]: nd for nd in q.graph.node if nd.op_type == "DequantizeLinear"}
    for nd in q.graph.node:
        if nd.op_type in ("QuantizeLinear", "DequantizeLinear"):
            mant, _ = np.frexp(consts[nd.input[1]])
            assert np.all(mant == 0.5) and np.all(consts[nd.input[2]] == 0)  # powers of two, zero point 0
    adds = [nd for nd in q.graph.node if nd.op_type == "Add"]
    assert len(adds) == 2 and [nd.op_type for nd in q.graph.node].count("Mul") == 0
    for add in adds:
        mm_out, bias_out = (add.input[1], add.input[0]) if add.input[0] in dqs else (add.input[0], add.input[1])
        mm = producers[mm_out]
        assert mm.op_type == "MatMul"  # no QDQ pair between the layer and its bias
        bias_dq, w_dq = dqs[bias_out], dqs[mm.input[1]]
        assert consts[bias_dq.input[0]].dtype == np.int32
        x_dq = producers[mm.input[0]]
        assert x_dq.op_type == "DequantizeLinear"
        s_in, s_w = consts[x_dq.input[1]], consts[w_dq.input[1]]
        np.testing.assert_array_equal(consts[bias_dq.input[1]], (s_in * s_w).astype(np.float32))
    # the activation is quantized after the (fused) Add → Relu, and again after the last Add
    q_inputs = [nd.input[0] for nd in q.graph.node if nd.op_type == "QuantizeLinear"]
    relu = next(nd for nd in q.graph.node if nd.op_type == "Relu")
    assert relu.output[0] in q_inputs and producers[relu.input[0]].op_type == "Add"
    assert adds[-1].output[0] in q_inputs
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = calib[0]
    ref = run(model, x)[0].astype(np.float64)
    got = sess.run(None, x)[0].astype(np.float64)
    assert 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2)) > 25  # dB


def test_quantize_bias_correction_moves_the_matmul_bias():
    from onnxsq.calibration import pow2
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    model = _rank3_matmul_model()
    rng = np.random.default_rng(4)
    calib = [{"x": (rng.standard_normal((2, 6, 8)) + 2.0).astype(np.float32)} for _ in range(8)]
    # no scale alignment: it would rescale the bias this test reads against the model's
    plain, _ = quantize(model, calib, config=QuantizeConfig(bias_correction=False, align_scales=False))
    fixed, _ = quantize(model, calib, config=QuantizeConfig(align_scales=False))
    b_plain, b_fixed = inits(plain), inits(fixed)
    bias_name = model.graph.node[2].input[1]  # the first Add's bias: [5], kept as it is by the fold
    bias, name = inits(model)[bias_name], f"{bias_name}_quantized"
    assert b_plain[name].dtype == np.int32
    scale = next(b_plain[nd.input[1]] for nd in plain.graph.node
                 if nd.op_type == "DequantizeLinear" and nd.input[0] == name)
    np.testing.assert_array_equal(b_plain[name], np.rint(np.ldexp(bias.astype(np.float64), pow2.shift_of(scale))))
    assert not np.array_equal(b_plain[name], b_fixed[name])
