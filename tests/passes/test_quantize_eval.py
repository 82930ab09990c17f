"""quantize's evaluation (onnxsq.passes.quantize.eval): both models in one graph, and a model whose
outputs come out of a subgraph (If) that reads the main graph's tensors."""

from __future__ import annotations

import numpy as np
import onnx
from builders import Builder, model_feeds, run
from onnx import TensorProto, helper

from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.eval import Q_PREFIX, combine


def _if_model() -> onnx.ModelProto:
    """x → Conv → Relu → r; y = If(ReduceMax(r) > -1, then: Identity(r), else: Neg(r)): both branches read
    ``r`` from the outer scope (a trained SVTRv2 export has three such If nodes)."""
    b = Builder(seed=4)
    r = b.node("Relu", [b.conv("x", 3, 4)])
    top = b.node("ReduceMax", [r], keepdims=0)
    cond = b.node("Greater", [top, b.const("lo", np.array(-1.0))])
    out = helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Identity", [r], ["branch"], name="then_id")], "then", [], [out])
    other = helper.make_graph([helper.make_node("Neg", [r], ["branch"], name="else_neg")], "else", [], [out])
    b.nodes.append(helper.make_node("If", [cond], ["y"], name="choose", then_branch=then, else_branch=other))
    return b.model({"x": [1, 3, 8, 8]}, ["y"], out_shapes={"y": [1, 4, 8, 8]})


def test_a_subgraph_reading_outer_tensors_is_combined_with_its_names_prefixed():
    model = _if_model()
    merged = combine(model, model)  # an internal graph (outputs without shapes): onnxruntime runs it
    ifs = [n for n in merged.graph.node if n.op_type == "If"]
    assert len(ifs) == 2
    q_then = next(a.g for a in ifs[1].attribute if a.name == "then_branch")
    assert q_then.node[0].input[0] == Q_PREFIX + ifs[0].attribute[0].g.node[0].input[0]
    assert q_then.output[0].name == Q_PREFIX + "branch"
    feed = model_feeds(model, 1)[0]
    a, b = run(merged, feed)
    np.testing.assert_array_equal(a, b)


def test_quantize_measures_a_model_with_an_if():
    model = _if_model()
    q, report = quantize(model, iter(model_feeds(model, 6)), config=QuantizeConfig(report_samples=3))
    onnx.checker.check_model(q)
    assert report.summary["output_sqnr_db"] > 25
    feed = model_feeds(model, 1, seed=7)[0]
    ref, got = run(model, feed)[0], run(q, feed)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
