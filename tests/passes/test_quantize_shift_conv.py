"""quantize.shift_conv: a per-channel shift of a ReLU's output (Keras's BatchNorm shift after ReLU and MaxPool)
as a depthwise 1x1 Conv with unit weights: the same float values; quantized, onnxruntime runs it as a
QLinearConv instead of a float Add between a DequantizeLinear and a QuantizeLinear, and simulate equals it bit
for bit."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from builders import Builder, feeds_for, ort_optimized_graph, run

import onnxsq.passes.quantize.ptq as ptq
from onnxsq.graph import export_like, import_graph
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.shift_conv import shifts_as_convs

ort = pytest.importorskip("onnxruntime")
X = [1, 4, 8, 8]


def _net(shift: np.ndarray | None = None, pool: bool = True) -> onnx.ModelProto:
    """x → Conv → Relu [→ MaxPool] → Add(shift [8, 1, 1]) → Conv (padded) → Relu → Conv."""
    b = Builder(7)
    y = b.node("Relu", [b.conv("x", 4, 8)])
    if pool:
        y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    shift = b.rng.normal(0, 0.5, (8, 1, 1)) if shift is None else shift
    y = b.conv(b.const_op("Add", y, shift), 8, 8)
    return b.model({"x": X}, [b.conv(b.node("Relu", [y]), 8, 4)])


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = import_graph(inferred)
    done = shifts_as_convs(graph)
    out = export_like(graph, model)
    onnx.checker.check_model(out, full_check=True)
    return out, done


@pytest.mark.parametrize("pool", [True, False])
def test_the_shift_becomes_a_depthwise_conv_with_the_same_values(pool):
    model = _net(pool=pool)
    out, done = _rewritten(model)
    assert done == 1 and "Add" not in [n.op_type for n in out.graph.node]
    (dw,) = [n for n in out.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i == 8
                                                                      for a in n.attribute)]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[dw.input[1]].shape == (8, 1, 1, 1) and np.all(inits[dw.input[1]] == 1)
    for s in (1, 2):  # x * 1 + b: float32 products by one are exact
        feed = feeds_for(X, seed=s)
        np.testing.assert_allclose(run(out, feed)[0], run(model, feed)[0], rtol=1e-6, atol=1e-6)


def test_a_shift_nowhere_negative_stays_an_add_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="onnxsq.passes.quantize.shift_conv"):
        out, done = _rewritten(_net(shift=np.linspace(0.0, 1.0, 8).reshape(8, 1, 1)))
    assert done == 0 and "Add" in [n.op_type for n in out.graph.node]
    assert "nowhere negative" in caplog.text


def test_quantized_it_runs_as_qlinearconv_and_simulate_equals_onnxruntime(tmp_path, monkeypatch):
    from onnxsq.simulate.compare import ort_session
    from onnxsq.simulate.execute import Simulator
    from onnxsq.simulate.program import load_program

    model = _net()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal(X).astype(np.float32)} for _ in range(6)]
    q, rep = quantize(model, calib, config=QuantizeConfig(report_samples=0))
    onnx.checker.check_model(q)
    assert rep.summary["shifts_as_convs"] == 1
    optimized = [n.op_type for n in ort_optimized_graph(q, tmp_path, "q").node]
    assert "Add" not in optimized and optimized.count("QLinearConv") == 4
    monkeypatch.setattr(ptq, "shifts_as_convs", lambda *a: 0)
    plain, _ = quantize(model, calib, config=QuantizeConfig(report_samples=0))
    assert "Add" in [n.op_type for n in ort_optimized_graph(plain, tmp_path, "plain").node]  # a float Add
    program = load_program(q)
    sim, exact = Simulator(program), ort_session(str(tmp_path / "q.onnx"), precise=True)
    for s in (5, 6):
        feed = feeds_for(X, seed=s)
        got = sim.run(feed).outputs[program.outputs[0]]
        np.testing.assert_array_equal(got, exact.run([program.outputs[0]], feed)[0])
        ref = run(model, feed)[0]  # still the float model's values, within the int8 steps of the output
        np.testing.assert_allclose(got, ref, atol=0.1 * np.abs(ref).max())


def test_off_with_fold_forward_a_trained_graph_keeps_its_add():
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal(X).astype(np.float32)} for _ in range(3)]
    q, rep = quantize(_net(), calib, config=QuantizeConfig(report_samples=0, fold_forward=False))
    assert "shifts_as_convs" not in rep.summary
    assert sum(n.op_type == "Add" for n in q.graph.node) == 1
