"""quantize.stem_pad: a Conv reading a quantized graph input of 3 channels reads it zero-padded to 4 with zero
weight columns, through DQ → Pad → Q → DQ at the input's scale. Structure, onnx.checker, the same outputs as
without the pad (exactly, in onnxruntime's unoptimized and optimized sessions), onnxruntime's graph (the stem
is a QLinearConv), params unchanged, simulate bit for bit; the refusals with their reasons; the simulator's
integer zero Pad."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from builders import Builder, ort_optimized_graph

import onnxsq.passes.quantize.insert as insert
from onnxsq.params import params_from_model
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.simulate import moves
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.fixed import NotInteger
from onnxsq.simulate.program import Step, load_program

ort = pytest.importorskip("onnxruntime")
SHAPE = [1, 3, 12, 12]
LOG = "onnxsq.passes.quantize.stem_pad"


def _net(cin: int = 3, cout: int = 16, group: int = 1, kernel: int = 3, stride: int = 1) -> onnx.ModelProto:
    """Conv(cin → cout, kernel x kernel / stride) → Relu → Conv(cout → 16) → Relu."""
    b = Builder(seed=3)
    x = b.node("Relu", [b.conv("x", cin, cout, group=group, kernel=kernel, strides=[stride, stride])])
    return b.model({"x": [1, cin, *SHAPE[2:]]}, [b.node("Relu", [b.conv(x, cout, 16)])])


def _feeds(cin: int = 3, n: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal([1, cin, *SHAPE[2:]]).astype(np.float32)} for _ in range(n)]


def _quantize(model: onnx.ModelProto, cin: int = 3, pad: bool = True, monkeypatch=None,
              carrier: str = "native") -> onnx.ModelProto:
    if not pad:
        monkeypatch.setattr(insert, "pad_input_channels", lambda *a: [])
    q, _ = quantize(model, _feeds(cin), config=QuantizeConfig(report_samples=0, carrier=carrier))
    onnx.checker.check_model(q)
    return q


def _session(q: onnx.ModelProto, level) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level, so.log_severity_level = level, 3
    return ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _weights(q: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer if i.name.endswith("_quantized")}


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_stem_reads_its_input_padded_to_four_channels(monkeypatch):
    q = _quantize(_net())
    producers = {o: n for n in q.graph.node for o in n.output}
    init = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    (pad,) = [n for n in q.graph.node if n.op_type == "Pad" and n.input[0] not in init]
    dq = producers[pad.input[0]]
    assert dq.op_type == "DequantizeLinear" and producers[dq.input[0]].input[0] == "x"
    assert init[pad.input[1]].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    (requant,) = [n for n in q.graph.node if pad.output[0] in n.input]
    assert requant.op_type == "QuantizeLinear" and list(requant.input[1:]) == list(dq.input[1:])
    (redq,) = [n for n in q.graph.node if requant.output[0] in n.input]
    stem = next(n for n in q.graph.node if n.op_type == "Conv")
    assert redq.op_type == "DequantizeLinear" and stem.input[0] == redq.output[0]
    wpad = producers[producers[stem.input[1]].input[0]]  # the weight: its stored integers through a zero Pad
    assert wpad.op_type == "Pad" and init[wpad.input[1]].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    plain = _quantize(_net(), pad=False, monkeypatch=monkeypatch)
    assert _equal(_weights(q), _weights(plain))  # the stored integers are unchanged
    assert init[wpad.input[0]].shape == (16, 3, 3, 3)
    assert params_from_model(q) == params_from_model(plain)


@pytest.mark.parametrize("carrier", ["native", "uint8"])
@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_ALL"])
def test_the_outputs_are_the_same_as_without_the_pad(monkeypatch, level, carrier):
    level = getattr(ort.GraphOptimizationLevel, level)
    padded = _quantize(_net(), carrier=carrier)
    assert [n.op_type for n in padded.graph.node].count("Pad") == 2
    a = _session(padded, level)
    b = _session(_quantize(_net(), pad=False, monkeypatch=monkeypatch, carrier=carrier), level)
    for f in _feeds(seed=7):
        np.testing.assert_allclose(a.run(None, f)[0], b.run(None, f)[0], rtol=0, atol=0)


def test_onnxruntime_runs_the_padded_stem_as_a_qlinearconv(tmp_path):
    graph = ort_optimized_graph(_quantize(_net()), tmp_path, "stem")
    ops = [n.op_type for n in graph.node]
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops and "FusedConv" not in ops
    assert ops.count("Pad") == 1  # the input's; the weight's is folded at session start
    init = {i.name: i for i in graph.initializer}
    stem = next(n for n in graph.node if n.op_type == "QLinearConv")
    assert list(init[stem.input[3]].dims) == [16, 4, 3, 3]


@pytest.mark.parametrize("carrier", ["native", "uint8"])
def test_simulate_is_bit_exact_on_the_padded_stem(tmp_path, carrier):
    q = _quantize(_net(), carrier=carrier)
    path = tmp_path / "stem.onnx"
    onnx.save(q, str(path))
    program = load_program(q)
    (layer,) = [lay for lay in program.layers if any(s.op == "Pad" for s in lay.steps)]
    assert layer.kind == "int" and not program.islands
    sim, exact = Simulator(program), ort_session(str(path), precise=True)
    for f in _feeds(seed=9):
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], exact.run(None, f)[0])


@pytest.mark.parametrize(("cin", "cout", "group", "kernel", "stride", "why"), [
    (3, 8, 1, 3, 1, "8 output channels"),
    (3, 24, 3, 3, 1, "a grouped Conv"),
    (3, 16, 1, 3, 2, "strides [2, 2]"),
    (3, 16, 1, 7, 1, "kernel 7x7"),
    (4, 16, 1, 3, 1, None),
])
def test_other_convs_are_left_alone_with_a_reason(caplog, cin, cout, group, kernel, stride, why):
    with caplog.at_level(logging.INFO, logger=LOG):
        q = _quantize(_net(cin, cout, group, kernel, stride), cin)
    assert "Pad" not in [n.op_type for n in q.graph.node]
    said = [r.getMessage() for r in caplog.records if r.name == LOG]
    if why is None:
        assert not said
    else:
        assert any("input channels not padded" in m and why in m for m in said), said


def test_the_simulators_pad_adds_zeros_and_refuses_other_values():
    v = np.arange(6, dtype=np.int8).reshape(1, 2, 3)
    step = Step("Pad", ["v", "p"], ["y"])
    out = moves.shape_op(step, v, [np.array([0, 0, 1, 0, 1, 2])])
    np.testing.assert_array_equal(out, np.pad(v, [(0, 0), (0, 1), (1, 2)]))
    assert out.dtype == np.int8
    with pytest.raises(NotInteger):
        moves.shape_op(step, v, [np.array([0, 0, 1, 0, 1, 2]), np.array(1.0)])
    with pytest.raises(NotInteger):
        moves.shape_op(Step("Pad", ["v", "p"], ["y"], {"mode": "reflect"}), v, [np.array([0, 0, 1, 0, 1, 2])])


def test_fine_tuning_starts_from_the_unpadded_integers(monkeypatch):
    from onnxsq.training.finetune import ptq_integers

    model = _net()
    floats = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    got = ptq_integers(_quantize(model), floats)
    want = ptq_integers(_quantize(_net(), pad=False, monkeypatch=monkeypatch), floats)
    assert got.keys() == want.keys() and any(v.shape == (16, 3, 3, 3) for v in got.values())
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
