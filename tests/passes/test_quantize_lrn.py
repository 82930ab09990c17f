"""LRN float islands written as Pow, a channel-window AveragePool and elementwise ops after the QDQ pairs are in
(placement_forms.decompose_lrn, called by insert): equal to onnxruntime's LRN up to float rounding, the quantized
model's integers as before, onnxruntime's graph fully fused around it, simulate bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, ort_optimized_graph

import onnxsq.passes.quantize.insert as insert
from onnxsq.graph import UniqueNames, export_like, import_graph
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.placement_forms import decompose_lrn
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program

ort = pytest.importorskip("onnxruntime")
SHAPE = [1, 3, 8, 8]
RTOL = 1e-5  # float32: a handful of roundings (measured ≤ 6e-7 relative on zfnet's LRN)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level, so.log_severity_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def _lrn_model(size: int, beta: float, opset: int = 13) -> onnx.ModelProto:
    b = Builder(seed=size)
    y = b.node("LRN", ["x"], size=size, alpha=5e-4, beta=beta, bias=2.0)
    return b.model({"x": [1, 7, 5, 5]}, [y], opset=opset)


def _lrn_reference(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX's LRN definition in float64: the window of channels c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    x64, c = x.astype(np.float64), x.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.stack([(x64[:, max(0, i - lo):min(c, i + hi + 1)] ** 2).sum(axis=1) for i in range(c)], axis=1)
    return x64 / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize(("size", "beta"), [(5, 0.75), (4, 0.75), (3, 0.6)])
def test_decomposed_lrn_equals_onnxruntimes_lrn(size, beta):
    """Against onnxruntime's LRN (odd sizes: it refuses even ones) and ONNX's definition in float64."""
    model = _lrn_model(size, beta)
    graph = import_graph(model)
    (done,) = decompose_lrn(graph, UniqueNames(graph))
    assert "LRN written as" in done
    out = export_like(graph, model)
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert "LRN" not in ops and "AveragePool" in ops and ("Sqrt" in ops) == (beta == 0.75)
    rng = np.random.default_rng(size)
    for scale in (1.0, 30.0):  # 30: the window sums make the denominator matter
        feed = {"x": (rng.standard_normal([1, 7, 5, 5]) * scale).astype(np.float32)}
        got = _run(out, feed)[0]
        np.testing.assert_allclose(got, _lrn_reference(feed["x"], size, 5e-4, beta, 2.0), rtol=RTOL, atol=1e-7)
        if size % 2:
            np.testing.assert_allclose(got, _run(model, feed)[0], rtol=RTOL, atol=1e-7)


def test_before_opset_13_nothing_changes():
    graph = import_graph(_lrn_model(5, 0.75, opset=12))
    assert decompose_lrn(graph, UniqueNames(graph)) == [] and [n.op for n in graph.nodes] == ["LRN"]


def _net(relu: bool) -> onnx.ModelProto:
    """Conv → [Relu] → LRN (float island) → MaxPool → Conv → Relu; without the Relu the LRN reads int8 codes."""
    b = Builder(seed=8)
    c = b.conv("x", 3, 16)
    lrn = b.node("LRN", [b.node("Relu", [c]) if relu else c], size=5, alpha=1e-3, beta=0.75, bias=1.0)
    pool = b.node("MaxPool", [lrn], kernel_shape=[2, 2], strides=[2, 2])
    return b.model({"x": SHAPE}, [b.node("Relu", [b.conv(pool, 16, 8)])])


def _feeds(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal(SHAPE) * 2).astype(np.float32)} for _ in range(n)]


def _optimized_ops(q: onnx.ModelProto, tmp_path, tag: str) -> list[str]:
    return [n.op_type for n in ort_optimized_graph(q, tmp_path, tag).node]


@pytest.mark.parametrize(("relu", "integer_only"), [(True, False), (False, False), (True, True)])
def test_quantized_lrn_island_is_decomposed_and_simulate_equals_onnxruntime(tmp_path, monkeypatch, relu,
                                                                              integer_only):
    cfg = QuantizeConfig(report_samples=0, integer_only=integer_only)
    q, _ = quantize(_net(relu), _feeds(6, 0), config=cfg)
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert "LRN" not in ops and ops.count("AveragePool") == 1
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    (power,) = [n for n in q.graph.node if n.op_type == "Pow"]
    assert producers[power.input[0]] == ("DequantizeLinear" if relu else "Clip")  # int8 codes read through one Clip
    assert _optimized_ops(q, tmp_path, "q").count("QLinearConv") == 2  # both Convs still fuse
    monkeypatch.setattr(insert, "decompose_lrn", lambda *a: [])
    plain, _ = quantize(_net(relu), _feeds(6, 0), config=cfg)
    assert "LRN" in [n.op_type for n in plain.graph.node]
    program = load_program(q)
    onnx.save(q, str(tmp_path / "q.onnx"))
    sim, exact = Simulator(program), ort_session(str(tmp_path / "q.onnx"), precise=True)
    for f in _feeds(3, 9):
        got, ref = _run(q, f)[0], _run(plain, f)[0]
        step = float(np.abs(np.diff(np.unique(ref))).min()) if np.unique(ref).size > 1 else 1.0
        assert np.mean(got == ref) >= 0.99 and np.abs(got - ref).max() <= step * 1.001  # float rounding at most
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], exact.run(None, f)[0])
