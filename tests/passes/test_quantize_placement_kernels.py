"""Placement with ort_kernels (QuantizeConfig.ort_kernels, --ort-kernels): Sigmoid and LeakyRelu after a
quantized tensor get their own scale and a Mul of two activations is an integer product, as onnxruntime
runs them (QLinearSigmoid, QLinearLeakyRelu, QLinearMul); with --integer-only a look-up table ends at
them. Structure, onnxruntime's graph and numerics, simulate bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder

from onnxsq.graph import import_graph
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.placement import plan_qdq
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program

ort = pytest.importorskip("onnxruntime")
SHAPE = [1, 3, 8, 8]


def _silu_net(*, sigmoid_output: bool = False) -> onnx.ModelProto:
    """Conv → SiLU → Conv → LeakyRelu → Conv, and (``sigmoid_output``) a Sigmoid graph output."""
    b = Builder(seed=21)
    c = b.conv("x", 3, 8)
    silu = b.node("Mul", [c, b.node("Sigmoid", [c])])
    leaky = b.node("LeakyRelu", [b.conv(silu, 8, 8)], alpha=0.1)
    out = b.conv(leaky, 8, 4)
    return b.model({"x": SHAPE}, [b.node("Sigmoid", [out]) if sigmoid_output else out])


def _feeds(n: int = 6, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)]


def _plan(model: onnx.ModelProto, **kw):
    return plan_qdq(import_graph(onnx.shape_inference.infer_shapes(model)), **kw)


def _entries(plan) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for e in plan.layers:
        out.setdefault(e.op, []).append((e.action, e.reason))
    return out


def test_sigmoid_leaky_relu_and_the_product_are_quantized():
    model = _silu_net()
    on, off = _entries(_plan(model, ort_kernels=True)), _entries(_plan(model))
    assert on["Sigmoid"] == [("quantized", "own scale (onnxruntime's QLinearSigmoid)")]
    assert on["LeakyRelu"] == [("quantized", "own scale (onnxruntime's QLinearLeakyRelu)")]
    assert on["Mul"][0][0] == "quantized"
    assert [a for a, _ in off["Sigmoid"] + off["LeakyRelu"] + off["Mul"]] == ["skipped"] * 3  # float islands


def test_a_sigmoid_graph_output_stays_float():
    entries = _entries(_plan(_silu_net(sigmoid_output=True), ort_kernels=True))
    assert [a for a, _ in entries["Sigmoid"]] == ["quantized", "skipped"]


def test_integer_only_tables_end_at_the_sigmoid():
    plan = _plan(_silu_net(), ort_kernels=True, integer_only=True)
    entries = _entries(plan)
    assert entries["Sigmoid"][0][0] == "quantized" and "look-up table" in entries["Sigmoid"][0][1]
    assert entries["Mul"][0] == ("quantized", "")  # the product of the Conv output and the table's
    whole = _entries(_plan(_silu_net(), integer_only=True))
    assert whole["Sigmoid"][0][0] == "fused"  # without ort_kernels: one SiLU table


@pytest.mark.parametrize("integer_only", [False, True])
def test_onnxruntime_runs_them_on_integers_and_simulate_equals_it(tmp_path, integer_only):
    model = _silu_net()
    # the uint8 carrier: one type through every layer, which onnxruntime's fusions need (test_quantize_carrier)
    cfg = QuantizeConfig(report_samples=0, integer_only=integer_only, carrier="uint8", ort_kernels=True)
    q, _ = quantize(model, _feeds(), config=cfg)
    onnx.checker.check_model(q)
    path, opt = tmp_path / "q.onnx", str(tmp_path / "q.opt.onnx")
    onnx.save(q, str(path))
    so = ort.SessionOptions()
    so.optimized_model_filepath, so.log_severity_level = opt, 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(opt).graph.node]
    for op in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearMul"):
        assert op in ran, (op, ran)
    assert not {"Sigmoid", "LeakyRelu", "Mul", "Conv"} & set(ran)
    x = _feeds(1, 7)[0]
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = session.run(None, x)[0]
    assert np.max(np.abs(got - y)) < 0.05 * np.max(np.abs(y))
    program = load_program(q)
    sim, exact = Simulator(program), ort_session(str(path), precise=True)
    for f in _feeds(3, 9):
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], exact.run(None, f)[0])


def test_a_sigmoid_reaching_the_output_through_moves_stays_float():
    b = Builder(seed=4)
    sig = b.node("Sigmoid", [b.conv("x", 3, 4)])
    flat = b.node("Reshape", [sig, b.const("shape", np.array([1, -1]), np.int64)])
    model = b.model({"x": SHAPE}, [flat])
    entries = _entries(_plan(model, ort_kernels=True))
    assert [a for a, _ in entries["Sigmoid"] + entries["Reshape"]] == ["skipped", "skipped"]
    # read by a Conv as well, it is quantized (one reader is no move to the output)
    b2 = Builder(seed=4)
    sig2 = b2.node("Sigmoid", [b2.conv("x", 3, 4)])
    out = b2.node("Reshape", [sig2, b2.const("shape", np.array([1, -1]), np.int64)])
    model2 = b2.model({"x": SHAPE}, [out, b2.conv(sig2, 4, 4)])
    assert _entries(_plan(model2, ort_kernels=True))["Sigmoid"][0][0] == "quantized"
