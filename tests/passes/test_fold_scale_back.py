"""fold-batchnorm's scale_back: a positive per-channel scale after a ReLU/MaxPool (Keras's BN after the
activation and the pool, tf2onnx's ``Mul → Add``) moves back into the layer before them,
``maxpool(relu(a y)) = a maxpool(relu(y))``.

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
RTOL, ATOL = 1e-5, 1e-5  # float32: one rounding per stored weight, summed over a 3x3x4 window
X = [1, 4, 8, 8]


def _keras_block(b: Builder, scale: np.ndarray | None = None, through: str = "pool", shared: bool = False,
                 div: bool = False) -> onnx.ModelProto:
    """x → Conv → Relu [→ MaxPool] → Mul(scale) [Div] → Add → Conv (padded): Keras's Conv, ReLU, pool, BN."""
    y = b.node("Relu", [b.conv("x", 4, 8)])
    if through == "pool":
        y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    a = b.rng.uniform(0.5, 8.0, (8, 1, 1)) if scale is None else scale
    m = b.const_op("Div" if div else "Mul", y, 1.0 / a if div else a)
    outs = [b.conv(b.const_op("Add", m, b.rng.normal(0, 0.5, (8, 1, 1))), 8, 6)]
    if shared:
        outs.append(b.conv(y, 8, 2))  # a second reader of the pool's output
    return b.model({"x": X}, outs)


def _dense_block(b: Builder) -> onnx.ModelProto:
    """x [1, 16] → Gemm → Relu → Mul(a [8]) → Add → Gemm (Keras's Dense, ReLU, BN, Dense)."""
    w, c = b.const("w", b.weight((16, 8), 16)), b.const("c", b.rng.normal(0, 1, 8))
    y = b.node("Relu", [b.node("Gemm", ["x", w, c])])
    m = b.const_op("Add", b.const_op("Mul", y, b.rng.uniform(0.5, 4.0, 8)), b.rng.normal(0, 0.5, 8))
    return b.model({"x": [1, 16]}, [b.node("Gemm", [m, b.const("w", b.weight((8, 5), 8)), b.const("c", np.zeros(5))])])


def _fold(model: onnx.ModelProto, shape: list[int] = X):
    before = model.SerializeToString()
    folded, report = fold_batchnorm(model)
    assert model.SerializeToString() == before, "the input model was mutated"
    onnx.checker.check_model(folded, full_check=True)
    for feed in (feeds_for(shape, seed=s) for s in (1, 2)):
        for r, g in zip(run(model, feed), run(folded, feed)):
            assert r.shape == g.shape
            np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
    return folded, report


def _entries(report) -> list[tuple[str, str, str]]:
    return [(c.op, c.action, c.details["pattern"]) for c in report.candidates if c.details.get("moved_back")]


@pytest.mark.parametrize(("through", "div"), [("pool", False), ("relu", False), ("pool", True)])
def test_the_scale_moves_back_into_the_conv_before_the_relu_and_pool(through, div):
    folded, report = _fold(_keras_block(Builder(1), through=through, div=div))
    chain = ["Relu", "MaxPool"] if through == "pool" else ["Relu"]
    assert sorted(ops(folded)) == sorted(["Conv", *chain, "Add", "Conv"])
    op = "Div" if div else "Mul"
    assert _entries(report) == [(op, "folded", "→".join(["Conv", *chain, op]))]
    assert report.summary["scale_back_candidates"] == 1 and report.summary["scale_back_folded"] == 1


def test_a_dense_layers_scale_moves_back_into_its_gemm():
    folded, report = _fold(_dense_block(Builder(2)), [1, 16])
    assert ops(folded) == ["Gemm", "Relu", "Add", "Gemm"]
    assert _entries(report) == [("Mul", "folded", "Gemm→Relu→Mul")]


SCALES = {"negative": [1.0, 2.0, -0.5, 1.0, 1.0, 0.7, 1.1, 0.9], "zero": [1.0, 2.0, 0.0, 1.0, 1.0, 0.7, 1.1, 0.9]}


@pytest.mark.parametrize(("kind", "why"), [("negative", "not positive in every channel (1 of 8)"),
                                           ("zero", "not positive in every channel (1 of 8)"),
                                           ("spatial", "is not per-channel"), ("shared", "also feeds 1 other node")])
def test_refused_candidates_keep_the_graph_and_say_why(kind, why):
    b = Builder(3)
    scale = (np.array(SCALES[kind]).reshape(8, 1, 1) if kind in SCALES
             else b.rng.uniform(0.5, 2.0, (1, 1, 4)) if kind == "spatial" else None)
    folded, report = _fold(_keras_block(b, scale=scale, shared=kind == "shared"))
    assert ops(folded).count("Mul") == 1 and ops(folded).count("Add") == 1
    ((op, action, _),) = _entries(report)
    (entry,) = [c for c in report.candidates if c.details.get("moved_back")]
    assert (op, action) == ("Mul", "skipped") and why in entry.reason


def test_quantized_block_runs_without_a_float_mul_and_simulate_equals_onnxruntime(tmp_path, monkeypatch):
    from onnxsq.passes.quantize import QuantizeConfig, quantize
    from onnxsq.simulate.compare import ort_session
    from onnxsq.simulate.execute import Simulator
    from onnxsq.simulate.program import load_program

    model = _keras_block(Builder(4))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal(X).astype(np.float32)} for _ in range(6)]
    q, rep = quantize(model, calib, config=QuantizeConfig(report_samples=0, align_scales=False))
    onnx.checker.check_model(q)
    assert not any("could not be folded" in w for w in rep.warnings)
    optimized = [n.op_type for n in ort_optimized_graph(q, tmp_path, "q").node]
    # the two Convs and the shift after the pool, as a depthwise Conv (quantize.shift_conv)
    assert "Mul" not in optimized and "Add" not in optimized and optimized.count("QLinearConv") == 3
    monkeypatch.setattr(fold_module, "fold_scales_back_graph", lambda *a: None)
    plain, _ = quantize(model, calib, config=QuantizeConfig(report_samples=0, align_scales=False))
    assert "Mul" in [n.op_type for n in ort_optimized_graph(plain, tmp_path, "plain").node]  # the float island
    path = tmp_path / "q.onnx"
    program = load_program(q)
    sim, exact = Simulator(program), ort_session(str(path), precise=True)
    for s in (5, 6):
        feed = feeds_for(X, seed=s)
        got = sim.run(feed).outputs[program.outputs[0]]
        np.testing.assert_array_equal(got, exact.run([program.outputs[0]], feed)[0])
        ref_f = run(model, feed)[0]  # still the float model's values, within the int8 steps of the output
        np.testing.assert_allclose(got, ref_f, atol=0.1 * np.abs(ref_f).max())


def test_per_tensor_quantization_leaves_the_scale_where_it_is():
    """One weight shift per tensor: a per-channel scale moved into the layer would spread its channels'
    ranges under that shift (fastmrz_mrz_seg 6.6 -> 0.0 dB), so quantize --per-tensor does not move it."""
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    model = _keras_block(Builder(seed=4))
    calib = [feeds_for(X, seed=s) for s in range(3)]
    muls = {}
    for per_channel in (True, False):
        cfg = QuantizeConfig(per_channel=per_channel, report_samples=0, align_scales=False)
        q, _ = quantize(model, calib, config=cfg)
        onnx.checker.check_model(q)
        muls[per_channel] = sum(n.op_type == "Mul" for n in q.graph.node)
    assert muls == {True: 0, False: 1}
