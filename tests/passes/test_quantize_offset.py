"""offset (onnxsq.passes.quantize.offset): SiLU / HardSwish outputs lifted to >= 0 where only layers
that take the offset exactly read them; the float model unchanged, the tensor unsigned, the refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, model_feeds, run

from onnxsq.graph import export_like, import_graph
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.offset import offset_outputs


def _net(act: str, reader: str = "conv1x1", bias: bool = True, opset: int = 14) -> onnx.ModelProto:
    """x 1×3×4×4 → 1×1 Conv(8) → ``act`` → ``reader`` → y: conv1x1, conv3x3 (padded 1), gemm (after a Flatten of
    the input: the activation on [1, 8]), matmul (on [1, 16, 8], with a bias Add or none)."""
    b = Builder(4)
    if reader in ("gemm", "matmul"):
        flat = b.node("Reshape", ["x"] + [b.const("s", np.array([1, 3, 16]), np.int64)])
        t = b.node("MatMul", [b.node("Transpose", [flat], perm=[0, 2, 1]), b.const("w", b.weight((3, 8), 3))])
        t = b.node("Reshape", [t, b.const("s", np.array([16, 8]), np.int64)]) if reader == "gemm" else t
    else:
        t = b.node("Conv", ["x", b.const("w", b.weight((8, 3, 1, 1), 3)), b.const("b", b.rng.normal(0, 1, 8))],
                   kernel_shape=[1, 1])
    if act in ("silu", "hswish"):
        gate = b.node("Sigmoid", [t]) if act == "silu" else b.node("HardSigmoid", [t], alpha=1 / 6, beta=0.5)
        y = b.node("Mul", [t, gate])
    elif act == "gelu":
        e = b.node("Erf", [b.node("Div", [t, b.const("r2", np.array(np.sqrt(2.0)))])])
        y = b.node("Mul", [b.node("Mul", [t, b.node("Add", [e, b.const("one", np.array(1.0))])]),
                           b.const("half", np.array(0.5))])
    else:
        y = b.node(act, [t])
    if reader.startswith("conv"):
        k = 3 if reader == "conv3x3" else 1
        ins = [y, b.const("w", b.weight((4, 8, k, k), 8 * k * k))] + ([b.const("b", np.ones(4))] if bias else [])
        out = b.node("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4)
    elif reader == "gemm":
        ins = [y, b.const("w", b.weight((4, 8), 8))] + ([b.const("b", np.ones(4))] if bias else [])
        out = b.node("Gemm", ins, transB=1, alpha=0.5)
    else:
        out = b.node("MatMul", [y, b.const("w", b.weight((8, 4), 8))])
        out = b.node("Add", [out, b.const("b", np.ones(4))]) if bias else out
    b.nodes.append(onnx.helper.make_node("Identity", [out], ["y"], name="out"))
    return b.model({"x": [1, 3, 4, 4]}, ["y"], opset=opset)


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    graph = import_graph(onnx.shape_inference.infer_shapes(model))
    done, refused = offset_outputs(graph)
    assert not (done and refused) or set(refused).isdisjoint(d["tensor"] for d in done)
    return export_like(graph, model), done


@pytest.mark.parametrize(("act", "bound"), [("silu", 0.2785), ("hswish", 0.375), ("HardSwish", 0.375)])
@pytest.mark.parametrize(("reader", "bias"), [("conv1x1", True), ("conv1x1", False), ("conv3x3", True),
                                              ("conv3x3", False), ("gemm", True), ("gemm", False), ("matmul", True),
                                              ("matmul", False)])
def test_lift_keeps_the_float_model_and_makes_the_tensor_nonnegative(act, bound, reader, bias):
    model = _net(act, reader, bias)
    new, done = _rewritten(model)
    onnx.checker.check_model(new)
    assert len(done) == 1 and bound <= done[0]["offset"] <= bound + 2**-6 + 1e-4
    assert (done[0]["offset"] * 64) % 1 == 0  # on the 2^-6 grid: exact in float
    lifted = next(n.output[0] for n in new.graph.node if n.op_type == "Add" and n.name.endswith("/offset"))
    probe = onnx.ModelProto()
    probe.CopyFrom(new)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(lifted, onnx.TensorProto.FLOAT, None))
    for feed in model_feeds(model, 3, seed=5):
        feed = {"x": feed["x"] * 4}  # both tails of the function
        want, (got, y) = run(model, feed)[0], run(probe, feed)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert y.min() >= 0.0


@pytest.mark.parametrize(("act", "reader"), [("gelu", "conv1x1"), ("Sigmoid", "conv1x1"), ("Relu", "conv1x1")])
def test_refused_where_the_offset_is_not_exact_or_not_needed(act, reader):
    assert _rewritten(_net(act, reader))[1] == []


def test_a_padded_conv_before_opset_11_refuses():
    assert _rewritten(_net("silu", "conv3x3", opset=10))[1] == []
    assert len(_rewritten(_net("silu", "conv1x1", opset=10))[1]) == 1


def test_refusals_are_named_in_the_report():
    model = _net("silu", "conv3x3", opset=10)
    _, rep = quantize(model, iter(model_feeds(model, 4)), config=QuantizeConfig(report_samples=0))
    (cand,) = [c for c in rep.candidates if c.op == "offset"]
    assert cand.action == "skipped" and "opset 11" in cand.reason and "offset_outputs" not in rep.summary


def test_another_reader_or_a_graph_output_refuses():
    b = Builder(1)
    t = b.node("Conv", ["x", b.const("w", b.weight((8, 3, 1, 1), 3))], kernel_shape=[1, 1])
    y = b.node("Mul", [t, b.node("Sigmoid", [t])])
    c = b.node("Conv", [y, b.const("w", b.weight((8, 8, 1, 1), 8))], kernel_shape=[1, 1])
    b.nodes.append(onnx.helper.make_node("Add", [c, y], ["y"], name="residual"))
    assert _rewritten(b.model({"x": [1, 3, 4, 4]}, ["y"]))[1] == []


def test_the_pass_quantizes_the_lifted_tensor_unsigned_and_gains():
    model = _net("silu", "conv1x1")
    calib = [{"x": f["x"] * 3} for f in model_feeds(model, 16)]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=4))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=4, offset_outputs=False))
    onnx.checker.check_model(on)
    assert rep.summary["offset_outputs"] == 1
    lifted = next(c for c in rep.candidates if c.details.get("tensor", "").endswith("_lifted"))
    assert lifted.details["signed"] is False
    err = {}
    for name, q in (("on", on), ("off", off)):
        err[name] = np.mean([np.mean((run(q, f)[0] - run(model, f)[0]) ** 2) for f in calib])
    assert err["on"] < err["off"]
