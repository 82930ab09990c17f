"""The native carrier's shared int8 activations (insert.share_through_clip): a signed 8-bit activation with
several readers is read through one unbounded Clip after its DequantizeLinear, so that onnxruntime's x86
QDQS8ToU8 pass (a QuantizeLinear with one output edge only) converts the pair and the producer fuses.
Structure, onnx.checker, the same values as without the Clip, onnxruntime's graph, simulate bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, ort_optimized_graph

import onnxsq.passes.quantize.insert as insert
from onnxsq.params import params_from_model
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program

ort = pytest.importorskip("onnxruntime")
SHAPE = [1, 3, 8, 8]


def _net() -> onnx.ModelProto:
    """Conv → decomposed HardSwish (x · clip(x + 3, 0, 6) / 6: x has two readers) → Conv → Relu → Conv."""
    b = Builder(seed=5)
    x = b.conv("x", 3, 8)
    clip = b.node("Clip", [b.const_op("Add", x, np.array(3.0)), b.const("lo", np.array(0.0)),
                           b.const("hi", np.array(6.0))])
    hsw = b.const_op("Div", b.node("Mul", [x, clip]), np.array(6.0))
    out = b.conv(b.node("Relu", [b.conv(hsw, 8, 8)]), 8, 4)
    return b.model({"x": SHAPE}, [out])


def _feeds(n: int = 6, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal(SHAPE) * 2).astype(np.float32)} for _ in range(n)]


def _quantize(carrier: str = "native", fanout: bool = True, monkeypatch=None) -> onnx.ModelProto:
    if not fanout:
        monkeypatch.setattr(insert, "share_through_clip", lambda *a: False)
    q, _ = quantize(_net(), _feeds(), config=QuantizeConfig(report_samples=0, carrier=carrier))
    onnx.checker.check_model(q)
    return q


def _fanout_clips(q: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in q.graph.node if n.op_type == "Clip" and len(n.input) == 1]


def _unoptimized(q: onnx.ModelProto, feed: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level, so.log_severity_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 3
    return ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_a_shared_int8_activation_is_read_through_one_clip(monkeypatch):
    q = _quantize()
    producers = {o: n for n in q.graph.node for o in n.output}
    readers = {i: [n for n in q.graph.node if i in n.input] for n in q.graph.node for i in n.input}
    (clip,) = _fanout_clips(q)  # only the HardSwish input has two readers
    dq = producers[clip.input[0]]
    assert dq.op_type == "DequantizeLinear" and readers[clip.input[0]] == [clip]
    zp = next(t for t in q.graph.initializer if t.name == dq.input[2])
    assert zp.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(zp).any()
    assert sorted(n.op_type for n in readers[clip.output[0]]) == ["Add", "Mul"]
    assert not _fanout_clips(_quantize("uint8"))  # one uint8 type already: nothing to convert
    without = _quantize(fanout=False, monkeypatch=monkeypatch)
    assert params_from_model(q) == params_from_model(without)  # the DequantizeLinear keeps the tensor's name
    for feed in _feeds(3, 4):  # the Clip is the identity: the same values
        np.testing.assert_array_equal(_unoptimized(q, feed), _unoptimized(without, feed))


_optimized = ort_optimized_graph  # the graph onnxruntime runs (all optimizations)


def test_onnxruntime_fuses_the_producer_and_simulate_equals_it(tmp_path, monkeypatch):
    def float_convs(q: onnx.ModelProto, tag: str) -> list[str]:
        return [n.op_type for n in _optimized(q, tmp_path, tag).node if n.op_type in ("Conv", "FusedConv",
                                                                                       "QLinearConv")]

    q = _quantize()
    assert float_convs(q, "fanout") == ["QLinearConv"] * 3
    assert "Conv" in float_convs(_quantize(fanout=False, monkeypatch=monkeypatch), "plain")  # the bug it fixes
    onnx.save(q, str(tmp_path / "fanout.onnx"))
    program = load_program(q)
    sim, exact = Simulator(program), ort_session(str(tmp_path / "fanout.onnx"), precise=True)
    for f in _feeds(3, 9):
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], exact.run(None, f)[0])


def _lrn_net() -> onnx.ModelProto:
    """Conv → Relu → LRN (a float island) → MaxPool → Conv → Relu: the pool's input is float."""
    b = Builder(seed=8)
    lrn = b.node("LRN", [b.node("Relu", [b.conv("x", 3, 16)])], size=5)
    pool = b.node("MaxPool", [lrn], kernel_shape=[2, 2], strides=[2, 2])
    return b.model({"x": SHAPE}, [b.node("Relu", [b.conv(pool, 16, 8)])])


@pytest.mark.parametrize("carrier", ["native", "uint8"])
def test_a_max_pool_after_a_float_island_stays_float(tmp_path, monkeypatch, carrier):
    def pool_inputs(q: onnx.ModelProto, tag: str) -> list[str]:
        g = _optimized(q, tmp_path, tag)
        producers = {o: n.op_type for n in g.node for o in n.output}
        return [producers.get(n.input[0], "input") for n in g.node if "MaxPool" in n.op_type]

    cfg = QuantizeConfig(report_samples=0, carrier=carrier)
    q, _ = quantize(_lrn_net(), _feeds(), config=cfg)
    onnx.checker.check_model(q)
    producers = {o: n for n in q.graph.node for o in n.output}
    readers = {i: n for n in q.graph.node for i in n.input}
    (pool,) = [n for n in q.graph.node if n.op_type == "MaxPool"]
    clip = readers[pool.output[0]]
    # the LRN island, decomposed (placement_forms.decompose_lrn): its last op is a Div
    assert producers[pool.input[0]].op_type == "Div" and clip.op_type == "Clip" and len(clip.input) == 1
    assert readers[clip.output[0]].op_type == "QuantizeLinear"
    assert "QuantizeLinear" not in pool_inputs(q, "kept")  # the pool runs on float
    monkeypatch.setattr(insert, "pool_stays_float", lambda *a: False)
    plain, _ = quantize(_lrn_net(), _feeds(), config=cfg)
    assert "QuantizeLinear" in pool_inputs(plain, "plain")  # onnxruntime moved the Q above the pool
    _same_values_and_simulated_exactly(q, plain, tmp_path / "kept.onnx")


def _same_values_and_simulated_exactly(q: onnx.ModelProto, plain: onnx.ModelProto, saved) -> None:
    """``q`` (saved at ``saved``) computes what ``plain`` does unoptimized, and simulate equals onnxruntime's
    precise fused run of it bit for bit."""
    program = load_program(q)
    sim, exact = Simulator(program), ort_session(str(saved), precise=True)
    for f in _feeds(3, 9):
        np.testing.assert_array_equal(_unoptimized(q, f), _unoptimized(plain, f))
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], exact.run(None, f)[0])


def _two_convs_net() -> onnx.ModelProto:
    """Conv → t (signed: no activation) read by two Convs → Add → Relu → Conv."""
    b = Builder(seed=11)
    t = b.conv("x", 3, 8)
    return b.model({"x": SHAPE}, [b.conv(b.node("Relu", [b.node("Add", [b.conv(t, 8, 8), b.conv(t, 8, 8)])]), 8, 4)])


def test_layers_reading_a_shared_int8_tensor_get_their_own_pair_and_fuse(tmp_path, monkeypatch):
    def float_convs(q: onnx.ModelProto, tag: str) -> list[str]:
        return [n.op_type for n in _optimized(q, tmp_path, tag).node if n.op_type in ("Conv", "FusedConv",
                                                                                       "QLinearConv")]

    cfg = QuantizeConfig(report_samples=0)
    q, _ = quantize(_two_convs_net(), _feeds(), config=cfg)
    onnx.checker.check_model(q)
    (clip,) = _fanout_clips(q)[:1]
    requant = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith(clip.output[0])]
    assert len(requant) == 2  # one pair per Conv reader, the second behind one more Clip
    assert float_convs(q, "own") == ["QLinearConv"] * 4
    monkeypatch.setattr(insert, "requantize_for_layers", lambda *a: None)
    plain, _ = quantize(_two_convs_net(), _feeds(), config=cfg)
    assert "Conv" in float_convs(plain, "plain")  # the readers ran float
    assert params_from_model(q) == params_from_model(plain)  # the same integers again: no new tensor
    _same_values_and_simulated_exactly(q, plain, tmp_path / "own.onnx")


def _three_convs_net() -> onnx.ModelProto:
    """Conv → t (signed) read by three Convs → Add → Add → Relu → Conv."""
    b = Builder(seed=13)
    t = b.conv("x", 3, 8)
    total = b.node("Add", [b.node("Add", [b.conv(t, 8, 8), b.conv(t, 8, 8)]), b.conv(t, 8, 8)])
    return b.model({"x": SHAPE}, [b.conv(b.node("Relu", [total]), 8, 4)])


def test_three_layer_readers_keep_three_quantize_nodes_in_onnxruntime(tmp_path, monkeypatch):
    """The k-th reader's pair reads through k Clips: equal Clips of one tensor would be merged by onnxruntime's
    CommonSubexpressionElimination, their Qs with them, and the merged Q (three edges) stays int8 and unfused."""
    cfg = QuantizeConfig(report_samples=0)
    q, _ = quantize(_three_convs_net(), _feeds(), config=cfg)
    onnx.checker.check_model(q)
    g = _optimized(q, tmp_path, "three")
    assert [n.op_type for n in g.node if n.op_type in ("Conv", "FusedConv", "QLinearConv")] == ["QLinearConv"] * 5
    producers = {o: n for n in q.graph.node for o in n.output}
    depths = []
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear" and "_for_" in n.name:
            d, cur = 0, producers[n.input[0]]
            while cur.op_type == "Clip":
                d, cur = d + 1, producers[cur.input[0]]
            depths.append(d)
    assert sorted(depths) == [1, 2, 3]  # the fan-out Clip, then one more per reader
    monkeypatch.setattr(insert, "requantize_for_layers", lambda *a: None)
    plain, _ = quantize(_three_convs_net(), _feeds(), config=cfg)
    assert params_from_model(q) == params_from_model(plain)
    _same_values_and_simulated_exactly(q, plain, tmp_path / "three.onnx")


def _pools_net() -> onnx.ModelProto:
    """Conv → Relu → AveragePool 3x3/1 pad 1 (Inception's pool branch) → Conv → Relu → AveragePool 2x2/2 → Conv."""
    b = Builder(seed=12)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    same = b.node("AveragePool", [r], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    half = b.node("AveragePool", [b.node("Relu", [b.conv(same, 8, 8)])], kernel_shape=[2, 2], strides=[2, 2])
    return b.model({"x": SHAPE}, [b.conv(half, 8, 4)])


def test_a_same_size_average_pool_runs_float(tmp_path, monkeypatch):
    def pools(q: onnx.ModelProto, tag: str) -> list[str]:
        return sorted(n.op_type for n in _optimized(q, tmp_path, tag).node if "AveragePool" in n.op_type)

    cfg = QuantizeConfig(report_samples=0)
    q, _ = quantize(_pools_net(), _feeds(), config=cfg)
    onnx.checker.check_model(q)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    feeding = [producers[n.input[0]] for n in q.graph.node if n.op_type == "AveragePool"]
    assert sorted(feeding) == ["Clip", "DequantizeLinear"]  # only the stride-1 pool reads through a Clip
    assert pools(q, "kept") == ["AveragePool", "QLinearAveragePool"]
    monkeypatch.setattr(insert, "average_pools_read_float", lambda *a: 0)
    plain, _ = quantize(_pools_net(), _feeds(), config=cfg)
    assert pools(plain, "plain") == ["QLinearAveragePool"] * 2  # onnxruntime's slow integer pool
    _same_values_and_simulated_exactly(q, plain, tmp_path / "kept.onnx")
