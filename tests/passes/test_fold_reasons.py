"""fold-batchnorm: one test per reason a BN is not folded; the model stays correct and the report says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")

from builders import Builder, assert_equivalent, feeds_for, ops

from onnxsq.errors import InvalidOptionError, ModelLoadError
from onnxsq.passes.fold_batchnorm import fold_batchnorm


def fold(model: onnx.ModelProto, **kw):
    before = model.SerializeToString()
    folded, report = fold_batchnorm(model, **kw)
    assert model.SerializeToString() == before
    onnx.checker.check_model(folded)
    return folded, report


def only(report):
    """The one BN entry (the affine folds' entries, e.g. for a BN's Mul/Add replacement, are beside it)."""
    bns = [c for c in report.candidates if c.op == "BatchNormalization"]
    assert len(bns) == 1, report.to_json()
    return bns[0]


def conv(b: Builder, x: str, cin: int = 2, cout: int = 3) -> str:
    return b.node("Conv", [x, b.const("w", b.weight((cout, cin, 3, 3), cin * 9))], pads=[1, 1, 1, 1])


def test_layer_output_that_is_a_graph_output_is_not_folded():
    b = Builder(1)
    c = conv(b, "x")
    y = b.bn(c, 3)
    model = b.model({"x": [1, 2, 5, 5]}, [c, y])
    folded, report = fold(model, standalone="keep")
    cand = only(report)
    assert cand.action == "skipped" and f"output {c} of Conv" in cand.reason and "graph output" in cand.reason
    assert folded.graph.initializer[0] == model.graph.initializer[0]  # conv weight untouched
    assert_equivalent(model, folded, feeds_for([1, 2, 5, 5]))
    folded, report = fold(model)  # default: the BN still becomes its exact Mul+Add form
    assert only(report).action == "replaced" and "graph output" in only(report).reason
    assert ops(folded) == ["Conv", "Mul", "Add"]
    assert_equivalent(model, folded, feeds_for([1, 2, 5, 5]))


def test_layer_output_that_feeds_other_nodes_is_not_folded():
    b = Builder(2)
    c = conv(b, "x")
    y = b.node("Add", [b.bn(c, 3), b.node("Relu", [c])])
    model = b.model({"x": [1, 2, 5, 5]}, [y])
    folded, report = fold(model, standalone="keep")
    assert only(report).action == "skipped" and "also feeds 1 other node(s)" in only(report).reason
    assert "BatchNormalization" in ops(folded)
    assert_equivalent(model, folded, feeds_for([1, 2, 5, 5]))


def test_training_mode_is_refused():
    b = Builder(3)
    y = b.bn(conv(b, "x"), 3, training_mode=1)
    model = b.model({"x": [2, 2, 5, 5]}, [y], opset=15, out_shapes={y: [2, 3, 5, 5]})
    folded, report = fold(model)
    assert only(report).action == "skipped" and "training_mode=1" in only(report).reason
    assert ops(folded) == ["Conv", "BatchNormalization"]


def test_running_statistics_outputs_in_use_are_refused():
    b = Builder(4)
    y, run_mean, run_var = b.bn(conv(b, "x"), 3, n_out=3, training_mode=1)
    model = b.model({"x": [2, 2, 5, 5]}, [y, run_mean], opset=14, out_shapes={y: [2, 3, 5, 5], run_mean: [3]})
    _, report = fold(model)
    assert only(report).action == "skipped" and "training" in only(report).reason


def test_statistics_outputs_select_training_mode_before_opset14():
    """Opset 9-13 have no training_mode: five outputs alone mean batch statistics, used or not."""
    b = Builder(4)
    y, *_ = b.bn(conv(b, "x"), 3, n_out=5)
    model = b.model({"x": [2, 2, 5, 5]}, [y], opset=9)
    folded, report = fold(model)
    assert only(report).action == "skipped" and "training form: 5 outputs" in only(report).reason
    assert ops(folded) == ["Conv", "BatchNormalization"]
    assert_equivalent(model, folded, feeds_for([2, 2, 5, 5]))


def test_spatial_0_is_refused():
    b = Builder(5)
    y = b.bn(conv(b, "x"), 3, spatial=0)
    model = b.model({"x": [1, 2, 5, 5]}, [y], opset=8)
    _, report = fold(model)
    assert only(report).action == "skipped" and "spatial=0" in only(report).reason


def test_bn_before_opset_7_is_refused():
    b = Builder(5)
    y = b.bn(conv(b, "x"), 3, is_test=1)
    model = b.model({"x": [1, 2, 5, 5]}, [y], opset=6)
    _, report = fold(model)
    assert only(report).action == "skipped" and "opset 6" in only(report).reason


def test_non_constant_parameters_are_refused():
    b = Builder(6)
    c = conv(b, "x")
    y = b.node("BatchNormalization", [c, "gamma_in"] + [b.const(p, np.ones(3)) for p in "bmv"])
    b.dtype = np.float32
    model = b.model({"x": [1, 2, 5, 5], "gamma_in": [3]}, [y])
    folded, report = fold(model)
    assert only(report).action == "skipped" and "scale (gamma_in) is not constant" in only(report).reason
    assert "BatchNormalization" in ops(folded)


def test_non_constant_weight_is_not_folded_into():
    b = Builder(7)
    y = b.bn(b.node("Conv", ["x", "w_in"], pads=[1, 1, 1, 1]), 3)
    model = b.model({"x": [1, 2, 5, 5], "w_in": [3, 2, 3, 3]}, [y])
    folded, report = fold(model, standalone="keep")
    assert only(report).action == "skipped" and "weight of Conv" in only(report).reason
    folded, report = fold(model)
    assert only(report).action == "replaced"
    feeds = {**feeds_for([1, 2, 5, 5]), **feeds_for([3, 2, 3, 3], seed=2, name="w_in")}
    assert_equivalent(model, folded, feeds)


def test_non_per_channel_constant_between_is_not_folded_through():
    b = Builder(8)
    c = conv(b, "x")
    a = b.node("Add", [c, b.const("c", b.rng.normal(size=(1, 1, 1, 5)))])  # varies along W
    model = b.model({"x": [1, 2, 5, 5]}, [b.bn(a, 3)])
    folded, report = fold(model)
    assert only(report).action == "replaced" and "not per-channel" in only(report).reason
    assert_equivalent(model, folded, feeds_for([1, 2, 5, 5]))


def test_non_affine_producer_is_reported():
    b = Builder(9)
    model = b.model({"x": [1, 2, 5, 5]}, [b.bn(b.node("Relu", [conv(b, "x")]), 3)])
    _, report = fold(model, standalone="keep")
    assert "comes from Relu" in only(report).reason


def test_matmul_on_a_rank3_input_is_not_folded():
    """BN's channel axis 1 of a [B, T, N] MatMul output is T, not the weight's output axis."""
    b = Builder(10)
    y = b.bn(b.node("MatMul", ["x", b.const("w", b.weight((4, 4), 4))]), 3)
    model = b.model({"x": [2, 3, 4]}, [y])
    folded, report = fold(model)
    assert only(report).action == "replaced" and "MatMul" in only(report).reason
    assert_equivalent(model, folded, feeds_for([2, 3, 4]))


def test_padded_next_conv_with_shift_is_not_folded_forward():
    b = Builder(11)
    model = b.model({"x": [1, 2, 5, 5]}, [conv(b, b.bn("x", 2))])
    folded, report = fold(model, standalone="keep")
    assert only(report).action == "skipped" and "pads its input" in only(report).reason
    assert ops(folded) == ["BatchNormalization", "Conv"]


def test_unknown_rank_stays_with_a_reason():
    """A Reshape to a runtime shape of unknown length: no rank, so no [C, 1, ...] constant fits."""
    b = Builder(12)
    y = b.node("ReduceSum", [b.bn(b.node("Reshape", ["x", "shape"]), 2)], keepdims=0)  # a scalar output
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6]),
                                             helper.make_tensor_value_info("shape", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        pytest.skip("this onnx's checker requires shapes on graph outputs")
    folded, report = fold(model)
    assert only(report).action == "skipped" and "rank of its input" in only(report).reason
    assert ops(folded) == ["Reshape", "BatchNormalization", "ReduceSum"]


def test_bn_inside_a_subgraph_is_reported_not_folded():
    b = Builder(13)
    inner = Builder(14)
    inner_y = inner.bn("x", 2)
    branch = helper.make_graph(inner.nodes, "then", [], [helper.make_tensor_value_info(inner_y, TensorProto.FLOAT,
                                                                                       [1, 2, 3])], inner.inits)
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["xo"])], "else", [],
                              [helper.make_tensor_value_info("xo", TensorProto.FLOAT, [1, 2, 3])])
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other))
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3]),
                                             helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    _, report = fold(model)
    assert only(report).action == "skipped" and "subgraph of If" in only(report).reason


def test_bad_option_and_bad_model():
    b = Builder(15)
    model = b.model({"x": [1, 2, 3]}, [b.bn("x", 2)])
    with pytest.raises(InvalidOptionError, match="standalone"):
        fold_batchnorm(model, standalone="drop")
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[1] = "nowhere"
    with pytest.raises(ModelLoadError, match="onnx.checker"):
        fold_batchnorm(broken)
