"""Placement's exact rewrites into onnxruntime's integer forms (placement_forms: a two-input Sum as Add, a
channel shuffle as a Gather) and the bounded functions' formats from their range (Sigmoid uint8 at 2^-8,
Tanh int8 at 2^-7), checked on structure, onnxruntime's numerics and simulate's bit-exactness."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder

from onnxsq.graph import export_like, import_graph
from onnxsq.params import params_from_model
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.placement import plan_qdq
from onnxsq.passes.quantize.placement_forms import rewrite_forms
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program

ort = pytest.importorskip("onnxruntime")
SHAPE = [1, 3, 8, 8]


def _shuffle_net(perm=(0, 2, 1, 3, 4)) -> onnx.ModelProto:
    """Conv-Relu (8 channels) → channel shuffle of 2 groups → Conv, added to the shuffled tensor by a Sum."""
    b = Builder(seed=11)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    five = b.node("Reshape", [r, b.const("s5", np.array([1, 2, 4, 8, 8]), np.int64)])
    t = b.node("Transpose", [five], perm=list(perm))
    shuffled = b.node("Reshape", [t, b.const("s4", np.array([1, 8, 8, 8]), np.int64)])
    out = b.node("Sum", [b.conv(shuffled, 8, 8), shuffled])
    return b.model({"x": SHAPE}, [out])


def _feeds(n: int = 4, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict, optimized: str | None = None) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    graph = import_graph(onnx.shape_inference.infer_shapes(model))
    done = rewrite_forms(graph)
    return export_like(graph, model), done


def test_the_shuffle_is_one_gather_and_sum_an_add_computing_the_same():
    model = _shuffle_net()
    new, done = _rewritten(model)
    onnx.checker.check_model(new)
    ops = [n.op_type for n in new.graph.node]
    assert "Transpose" not in ops and "Reshape" not in ops and "Sum" not in ops
    assert ops.count("Gather") == 1 and ops.count("Add") == 1 and len(done) == 2
    for feed in _feeds(2):
        np.testing.assert_array_equal(_run(new, feed), _run(model, feed))  # a permutation: bit for bit


def test_another_permutation_is_left_alone():
    new, done = _rewritten(_shuffle_net(perm=(0, 1, 2, 4, 3)))
    assert [d for d in done if "Gather" in d] == []
    assert "Transpose" in [n.op_type for n in new.graph.node]


def test_quantized_shuffle_runs_on_integers_and_simulates_exactly(tmp_path):
    q, report = quantize(_shuffle_net(), _feeds(6), config=QuantizeConfig(report_samples=0))
    onnx.checker.check_model(q)
    gather = next(c for c in report.candidates if c.op == "Gather")
    assert gather.action == "quantized" and "shares its input" in gather.reason and gather.name.endswith("_as_gather")
    opt = str(tmp_path / "q.opt.onnx")
    feed = _feeds(1, 3)[0]
    _run(q, feed, opt)
    ran = onnx.load(opt).graph.node
    assert not [n for n in ran if n.op_type == "Transpose" and len(next(a.ints for a in n.attribute)) == 5]
    assert "QLinearAdd" in [n.op_type for n in ran] and "Sum" not in [n.op_type for n in ran]
    path = tmp_path / "q.onnx"
    onnx.save(q, str(path))
    program = load_program(q)
    sim, session = Simulator(program), ort_session(str(path), precise=True)
    for f in _feeds(3, 9):
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], session.run(None, f)[0])


def _bounded_net(op: str, *, output: bool) -> onnx.ModelProto:
    b = Builder(seed=5)
    y = b.node(op, [b.conv("x", 3, 4)])
    return b.model({"x": SHAPE}, [y if output else b.conv(y, 4, 4)])


@pytest.mark.parametrize(("op", "signed"), [("Sigmoid", False), ("Tanh", True), ("HardSigmoid", False)])
def test_bounded_functions_take_their_format_from_the_range(op, signed):
    model = _bounded_net(op, output=False)  # a Conv reads it: quantized in the default placement too
    plan = plan_qdq(import_graph(onnx.shape_inference.infer_shapes(model)))
    assert list(plan.bounded.values()) == [signed]
    # calibration on tiny inputs sees a narrow range (it would choose a finer step); the range decides
    small = [{"x": f["x"] * 0.01} for f in _feeds(4)]
    q, _ = quantize(model, small, config=QuantizeConfig(report_samples=0))
    p = params_from_model(q)[next(iter(plan.bounded))]
    assert (p.signed, p.shift, p.bits) == (signed, 7 if signed else 8, 8)
    x = {"x": _feeds(1, 2)[0]["x"] * 0.01}
    y = _run(model, x)
    assert np.max(np.abs(_run(q, x) - y)) < 0.02 * np.max(np.abs(y)) + 0.05


def test_integer_only_sigmoid_output_is_unsigned_at_two_to_minus_eight(tmp_path):
    model = _bounded_net("Sigmoid", output=True)
    q, report = quantize(model, _feeds(4), config=QuantizeConfig(report_samples=0, integer_only=True))
    program = load_program(q)
    out = program.dq[program.outputs[0]]
    assert (program.tensors[out].signed, program.tensors[out].shift) == (False, 8)
    path = tmp_path / "io.onnx"
    onnx.save(q, str(path))
    sim, session = Simulator(program), ort_session(str(path), precise=True)
    for f in _feeds(2, 4):
        np.testing.assert_array_equal(sim.run(f).outputs[program.outputs[0]], session.run(None, f)[0])
