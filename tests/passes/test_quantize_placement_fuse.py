"""Activations fused into their layer (onnxsq.passes.quantize.placement_fuse, --fuse-activations): one
quantization point per layer, after the activation; and the cases it refuses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, activation_chain, model_feeds, run

from onnxsq.graph import import_graph
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.placement import plan_qdq


def _plan(model: onnx.ModelProto, fuse: str, **kw):
    return plan_qdq(import_graph(onnx.shape_inference.infer_shapes(model)), per_channel=True, fuse=fuse, **kw)


def _actions(plan) -> dict[str, str]:
    return {e.op: e.action for e in plan.layers}


def _conv_outputs(model: onnx.ModelProto) -> list[str]:
    return [n.output[0] for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize(("act", "mode", "fused"), [
    ("prelu", "leaky", ("PRelu",)), ("leaky", "leaky", ("LeakyRelu",)), ("silu", "all", ("Sigmoid", "Mul")),
    ("hswish", "all", ("HardSigmoid", "Mul")), ("HardSwish", "all", ("HardSwish",)), ("sigmoid", "all", ("Sigmoid",)),
    ("prelu", "all", ("PRelu",)),
])
def test_fused_activation_takes_the_layer_quantization_point(act, mode, fused):
    model = activation_chain(act)
    convs = _conv_outputs(model)
    plain, plan = _plan(model, "none"), _plan(model, mode)
    assert all(c in plain.activations for c in convs)  # without fusion: a point before each activation
    assert not any(c in plan.activations for c in convs)
    entries = [e for e in plan.layers if e.op in fused]
    assert len(entries) == 3 * len(fused) and all(e.action == "fused" and e.reason.startswith("fused into conv")
                                                  for e in entries)
    layer_points = [e.output for e in plan.layers if e.op == "Conv"]
    makers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert [makers[t] for t in layer_points] == [fused[-1]] * 3 and all(t in plan.activations for t in layer_points)


@pytest.mark.parametrize("act", ["silu", "hswish", "sigmoid", "HardSwish"])
def test_leaky_mode_leaves_functions_after_their_own_point(act):
    model = activation_chain(act)
    assert _plan(model, "leaky").activations == _plan(model, "none").activations


def test_relu_stays_fused_as_before():
    model = activation_chain("relu")
    assert _plan(model, "all").activations == _plan(model, "none").activations


def _refused(build) -> onnx.ModelProto:
    b = Builder(3)
    y = build(b, b.conv("x", 3, 8))
    b.nodes.append(onnx.helper.make_node("Conv", [y, b.const("w", b.weight((4, 8, 1, 1), 8))], ["y"], name="last",
                                         kernel_shape=[1, 1]))
    return b.model({"x": [1, 3, 8, 8]}, ["y"])


@pytest.mark.parametrize("case", ["two readers", "gate read twice", "variable slope", "excluded"])
def test_refusals_keep_the_layer_point(case):
    def build(b: Builder, t: str) -> str:
        if case == "two readers":  # the layer output is also added to the activation's output
            return b.node("Add", [b.node("LeakyRelu", [t], alpha=0.1), t])
        if case == "gate read twice":  # SiLU whose gate also feeds another Mul
            g = b.node("Sigmoid", [t])
            return b.node("Mul", [b.node("Mul", [t, g]), g])
        if case == "variable slope":
            return b.node("PRelu", [t, b.node("Sigmoid", [b.node("ReduceMean", [t], axes=[1, 2, 3])])])
        return b.node("LeakyRelu", [t], alpha=0.1)
    model = _refused(build)
    conv = _conv_outputs(model)[0]
    exclude = ("leakyrelu*",) if case == "excluded" else ()
    plan = _plan(model, "all", exclude=exclude)
    assert conv in plan.activations


@pytest.mark.parametrize(("act", "mode"), [("silu", "all"), ("prelu", "leaky")])
def test_quantized_model_rounds_once_per_layer(act, mode):
    """No quantization point between a layer and its activation; the model valid, run in onnxruntime, close
    to float; the report names the fused nodes and the layers' points after them."""
    model = activation_chain(act, seed=2)
    calib = model_feeds(model, 16)
    plain, _ = quantize(model, iter(calib))
    fused, report = quantize(model, iter(calib), config=QuantizeConfig(fuse_activations=mode))
    onnx.checker.check_model(fused)
    def layer_points(m: onnx.ModelProto) -> int:  # QuantizeLinear nodes that read a Conv's output
        convs = set(_conv_outputs(m))
        return sum(n.op_type == "QuantizeLinear" and n.input[0] in convs for n in m.graph.node)

    assert (layer_points(plain), layer_points(fused)) == (3, 0)
    err = []
    for feed in model_feeds(model, 4, seed=9):
        ref = run(model, feed)[0]
        err.append(float(np.mean((run(fused, feed)[0] - ref) ** 2) / np.mean(ref**2)))
    assert max(err) < 0.01  # > 20 dB on every sample (8-bit, three layers)
    layers = {c.name: c for c in report.candidates}
    assert sum(c.action == "fused" for c in layers.values()) == 3 * (2 if act == "silu" else 1)
    made = {o: n.op_type for n in model.graph.node for o in n.output}
    points = [c.details["tensor"] for c in layers.values() if c.name.startswith("conv")]
    assert [made[t] for t in points] == ["Mul" if act == "silu" else "PRelu"] * 3


def test_integer_only_ignores_fusion_with_a_warning():
    model = activation_chain("silu")
    _, report = quantize(model, iter(model_feeds(model, 4)), config=QuantizeConfig(fuse_activations="all",
                                                                            integer_only=True, report_samples=0))
    assert any(w.startswith("--fuse-activations all ignored with --integer-only") for w in report.warnings)


def test_unknown_mode_is_a_user_error():
    from onnxsq.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="--fuse-activations"):
        QuantizeConfig(fuse_activations="silu").validate()
