"""fold-batchnorm's relu_scale: a positive per-channel scale left before a ReLU (a standalone BN and Scale
after a Concat, as in DenseNet) moves into the Convs after it, ``relu(a x + b) = a relu(x + b / a)``.

Structure, onnx.checker, the report, numerics against onnxruntime (optimizations off) with explicit
tolerances; quantized, onnxruntime runs the block without a float Mul and simulate equals it bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, feeds_for, ops, ort_optimized_graph, run

import onnxsq.passes.fold_batchnorm.fold as fold_module
from onnxsq.passes.fold_batchnorm import fold_batchnorm

ort = pytest.importorskip("onnxruntime")
RTOL, ATOL = 1e-5, 1e-5  # float32: one rounding per stored value, summed over a 3x3x8 window
X = [1, 4, 6, 6]


def _dense_block(b: Builder, act: str = "Relu", scale: np.ndarray | None = None, readers: str = "conv",
                 zero_shift: bool = False) -> onnx.ModelProto:
    """x → Conv → Concat(x, conv) → BN → Mul(scale) → Add → act → readers (padded 3x3 Convs)."""
    cat = b.node("Concat", ["x", b.conv("x", 4, 4)], axis=1)
    y = b.bn(cat, 8, zero_shift=zero_shift)
    y = b.const_op("Mul", y, (b.rng.uniform(0.5, 2.0, (8, 1, 1)) if scale is None else scale))
    if not zero_shift:
        y = b.const_op("Add", y, b.rng.normal(0, 0.5, (8, 1, 1)))
    r = b.node(act, [y], **({"alpha": 0.1} if act == "LeakyRelu" else {}))
    if readers == "pool":
        return b.model({"x": X}, [b.node("MaxPool", [r], kernel_shape=[2, 2])])
    outs = [b.conv(r, 8, 6)]
    if readers == "two":  # a second, grouped reader
        outs.append(b.conv(r, 8, 4, group=2))
    return b.model({"x": X}, outs)


def _fold(model: onnx.ModelProto):
    before = model.SerializeToString()
    folded, report = fold_batchnorm(model)
    assert model.SerializeToString() == before, "the input model was mutated"
    onnx.checker.check_model(folded, full_check=True)
    for feed in (feeds_for(X, seed=s) for s in (1, 2)):
        for r, g in zip(run(model, feed), run(folded, feed)):
            assert r.shape == g.shape
            np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
    return folded, report


def _entries(report) -> list[tuple[str, str, str]]:
    return [(c.op, c.action, c.details.get("pattern", "")) for c in report.candidates if c.op in ("Relu", "LeakyRelu")]


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
def test_the_scale_moves_into_the_conv_after_the_activation(act):
    folded, report = _fold(_dense_block(Builder(1), act))
    assert sorted(ops(folded)) == sorted(["Conv", "Concat", "Add", act, "Conv"])
    assert _entries(report) == [(act, "folded", f"Mul→Add→Mul→Add→{act}→Conv")]
    assert report.summary["relu_scale_candidates"] == 1 and report.summary["relu_scale_folded"] == 1


def test_a_zero_shift_leaves_no_add_and_two_readers_both_take_the_scale():
    folded, report = _fold(_dense_block(Builder(2), zero_shift=True, readers="two"))
    assert sorted(ops(folded)) == sorted(["Conv", "Concat", "Relu", "Conv", "Conv"])
    assert _entries(report)[0][1] == "folded" and "became nothing" in report.candidates[-1].reason


SCALES = {"negative": [1.0, 2.0, -0.5, 1.0, 1.0, 0.7, 1.1, 0.9], "spread": [1.0, 2.0, 1e-3, 1.0, 1.0, 0.7, 1.1, 0.9]}


@pytest.mark.parametrize(("kind", "why"), [("negative", "not positive in every channel (1 of 8)"),
                                           ("spread", "x across channels (> 16)"), ("pool", "feeds MaxPool")])
def test_refused_candidates_keep_the_graph_and_say_why(kind, why):
    b = Builder(3)
    scale = np.array(SCALES[kind]).reshape(8, 1, 1) if kind in SCALES else None
    folded, report = _fold(_dense_block(b, scale=scale, readers="pool" if kind == "pool" else "conv"))
    assert ops(folded).count("Mul") == 2 and ops(folded).count("Add") == 2  # BN's Mul/Add and the chain, as they were
    (entry,) = [c for c in report.candidates if c.op == "Relu"]
    assert entry.action == "skipped" and why in entry.reason


def _optimized_ops(q: onnx.ModelProto, tmp_path, tag: str) -> list[str]:
    """The ops of the graph onnxruntime runs for ``q`` (all optimizations)."""
    return [n.op_type for n in ort_optimized_graph(q, tmp_path, tag).node]


def test_quantized_block_runs_without_a_float_mul_and_simulate_equals_onnxruntime(tmp_path, monkeypatch):
    from onnxsq.passes.quantize import QuantizeConfig, quantize
    from onnxsq.simulate.compare import ort_session
    from onnxsq.simulate.execute import Simulator
    from onnxsq.simulate.program import load_program

    model = _dense_block(Builder(4))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal(X).astype(np.float32)} for _ in range(6)]
    q, _ = quantize(model, calib, config=QuantizeConfig(report_samples=0, align_scales=False))
    onnx.checker.check_model(q)
    optimized = _optimized_ops(q, tmp_path, "q")
    assert "Mul" not in optimized and "QLinearConv" in optimized
    monkeypatch.setattr(fold_module, "fold_relu_scales_graph", lambda *a: None)
    plain, _ = quantize(model, calib, config=QuantizeConfig(report_samples=0, align_scales=False))
    assert "Mul" in _optimized_ops(plain, tmp_path, "plain")  # without the fold: a float Mul island
    path = tmp_path / "q.onnx"
    program = load_program(q)
    sim, exact = Simulator(program), ort_session(str(path), precise=True)
    for s in (5, 6):
        feed = feeds_for(X, seed=s)
        for out in program.outputs:
            got = sim.run(feed).outputs[out]
            ref = exact.run([out], feed)[0]
            np.testing.assert_array_equal(got, ref)
        # and still the float model's values, within the int8 steps of the output
        ref_f = run(model, feed)[0]
        np.testing.assert_allclose(sim.run(feed).outputs[program.outputs[0]], ref_f, atol=0.1 * np.abs(ref_f).max())
