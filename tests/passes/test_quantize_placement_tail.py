"""The float tail (onnxsq.passes.quantize.placement_tail): joins after the last layer that stay float, with
their inputs at their own scales, and the integer tails that do not."""

from __future__ import annotations

import numpy as np
import onnx
from builders import Builder, decoded_detector_head, model_feeds, run

from onnxsq.graph import import_graph
from onnxsq.passes.quantize import quantize
from onnxsq.passes.quantize.placement import plan_qdq
from onnxsq.passes.quantize.placement_tail import FLOAT_TAIL, float_tail


def _graph(model: onnx.ModelProto):
    return import_graph(onnx.shape_inference.infer_shapes(model))


def _layers(plan) -> dict[str, tuple[str, str]]:
    return {e.node: (e.action, e.reason) for e in plan.layers}


def test_joins_in_the_float_tail_stay_float_and_keep_the_scores():
    """A decoded detector head: Concat(pixel boxes, 0-1 scores) → y. One shared scale at the boxes' step
    would round every score to 0; the Concat stays float, and so do the Concats over the levels (nothing
    after them computes on integers); the convolutions keep their own scales."""
    model = decoded_detector_head()
    plan = plan_qdq(_graph(model), per_channel=True)
    layers = _layers(plan)
    assert layers["head"] == ("skipped", FLOAT_TAIL) and "y" not in plan.activations
    joins = {n: layers[n] for n in layers if n.startswith("concat")}
    assert list(joins.values()) == [("skipped", FLOAT_TAIL)] * 2  # boxes over the levels, logits over the levels
    assert [a for n, (a, _) in layers.items() if n.startswith("conv")] == ["quantized"] * 4
    q, _ = quantize(model, iter(model_feeds(model, 8)))
    onnx.checker.check_model(q)
    assert not any(n.op_type == "QuantizeLinear" and "y" in n.input for n in q.graph.node)
    for feed in model_feeds(model, 4, seed=11):
        ref, got = run(model, feed)[0][0], run(q, feed)[0][0]
        for rows in (slice(0, 4), slice(4, 7)):  # boxes, scores: each within 3% of its own range
            err = np.abs(got[rows] - ref[rows]).max()
            assert err < 0.03 * np.abs(ref[rows]).max(), (rows, err)


def test_the_float_tail_is_after_the_last_layer_and_before_float_ops_or_a_concat():
    """An anchor Add followed by a float Mul (a box decode) stays float; a residual Add that writes the
    output (integer ops only after the last layer) and an Add that a layer reads stay integer."""
    b = Builder(seed=3)
    c1, c2 = b.conv("x", 3, 4), b.conv("x", 3, 4)
    inner = b.node("Add", [c1, c2])
    residual = b.node("Add", [b.conv(inner, 4, 4), c2])
    anchors = b.node("Add", [c1, b.const("grid", np.arange(64.0).reshape(1, 1, 8, 8))])
    decoded = b.node("Mul", [anchors, b.const("stride", np.array(8.0))])
    graph = _graph(b.model({"x": [1, 3, 8, 8]}, [residual, decoded]))
    graph.toposort()
    assert float_tail(graph) == {anchors}
    layers = {e.output or e.node: (e.action, e.reason) for e in plan_qdq(graph).layers}
    assert layers[inner][0] == layers[residual][0] == "quantized"
    assert (FLOAT_TAIL in {r for _, r in layers.values()}) and anchors not in plan_qdq(graph).activations


def test_joins_inside_a_float_island_stay_float():
    """GELU spelled out after a Conv, x * 0.5 * (1 + erf(x / sqrt 2)), then a Conv: the Add of 1 reads only
    a float op's output (Erf), so neither it nor the erf gets a quantization point; the GELU's output,
    which a layer reads, does. An Add of a layer's output and a constant stays integer."""
    from onnxsq.passes.quantize.placement_tail import FLOAT_ISLAND

    b = Builder(seed=5)
    c = b.conv("x", 3, 4)
    erf = b.node("Erf", [b.node("Div", [c, b.const("r2", np.array(np.sqrt(2.0)))])])
    one = b.node("Add", [erf, b.const("one", np.array(1.0))])
    gelu = b.node("Mul", [b.node("Mul", [c, one]), b.const("half", np.array(0.5))])
    shifted = b.node("Add", [b.conv(gelu, 4, 4), b.const("three", np.array(3.0))])
    model = b.model({"x": [1, 3, 8, 8]}, [b.conv(shifted, 4, 4)])
    plan = plan_qdq(_graph(model), per_channel=True)
    by_output = {e.node: e for e in plan.layers}
    island = [e for e in by_output.values() if e.reason == FLOAT_ISLAND]
    assert len(island) == 1 and island[0].op == "Add"
    assert erf not in plan.activations and one not in plan.activations and gelu in plan.activations
    assert shifted in plan.activations  # a layer's output plus a constant: integer
    q, _ = quantize(model, iter(model_feeds(model, 6)))
    onnx.checker.check_model(q)
    feed = model_feeds(model, 1, seed=9)[0]
    ref, got = run(model, feed)[0], run(q, feed)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
