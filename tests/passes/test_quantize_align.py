"""quantize.align: a free scale per ReLU-type segment, carried by the weights around it. The rescaled
statistics equal the statistics of the scaled tensor (numpy oracle); the aligned quantized model computes
the float model's function (the weights carry the factor, every scale a power of two, zero points 0) and
is closer to it where a range sat just above a power of two; segments that cannot carry a factor are
refused with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, feeds_for, run
from builders import relu_net_peaking as _net
from builders import shift5_feed as _feed
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxsq.calibration import pow2
from onnxsq.calibration.means import ChannelMean
from onnxsq.calibration.stats import TensorStats, mse_errors
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.align import FACTORS, tensor_error

ort = pytest.importorskip("onnxruntime")
X = [1, 3, 8, 8]  # builders.relu_net_peaking's input


def _stats(x: np.ndarray) -> TensorStats:
    s = TensorStats(histogram=True)
    s.update(x)
    return s


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(FACTORS[1:]), st.booleans(),
       st.sampled_from([(0,), (1,), (7,), (3, 50)]))
def test_scaled_stats_match_the_stats_of_the_scaled_tensor(seed, factor, signed, shape):
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.7, shape).astype(np.float64)
    if signed:
        x -= 0.3
    x[rng.random(shape) < 0.2] = 0.0
    got, want = _stats(x).scaled(factor), _stats(x * factor)
    assert got.count == want.count and got.zeros == want.zeros
    assert got.min == pytest.approx(want.min, rel=1e-12) and got.max == pytest.approx(want.max, rel=1e-12)
    assert got.hist_exp == want.hist_exp
    assert got.hist_pos.sum() + got.hist_neg.sum() == want.hist_pos.sum() + want.hist_neg.sum()
    if x.size:  # rebinned: each count within one bin of where the data put it (spread inside its interval)
        cum = lambda h: np.cumsum(h)  # noqa: E731
        assert np.max(np.abs(cum(got.hist_pos) - cum(want.hist_pos))) <= max(3, 0.05 * x.size)


def test_scaled_stats_keep_the_moving_average_and_means():
    x = [np.random.default_rng(i).normal(0, 1 + i, (2, 4, 3, 3)).astype(np.float32) for i in range(3)]
    s, m = TensorStats(), ChannelMean(axis=1, rank=4)
    for b in x:
        s.update(b)
        m.update(b)
    got = s.scaled(1.5)
    assert got.ema_min == pytest.approx(1.5 * s.ema_min) and got.ema_max == pytest.approx(1.5 * s.ema_max)
    np.testing.assert_allclose(m.scaled(1.5).mean, 1.5 * m.mean, rtol=1e-12)
    assert m.scaled(1.5).count == m.count


@pytest.mark.parametrize("factor", FACTORS)
def test_factor_error_is_the_scaled_tensors_error_in_the_old_units(factor):
    x = np.random.default_rng(3).exponential(1.0, 20000)
    exact = _stats(x * factor)
    shift, err = min(mse_errors(exact, 8, False), key=lambda e: e[1])
    via = dict(mse_errors(_stats(x), 8, False, factor=factor))
    assert via[shift] == pytest.approx(err / factor**2, rel=0.05)
    assert tensor_error(_stats(x), 8, factor, "mse") == pytest.approx(err / factor**2, rel=0.05)


def _scales(model: onnx.ModelProto) -> list[float]:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return [float(v) for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            for v in np.ravel(inits[n.input[1]])]


def _sqnr(model: onnx.ModelProto, q: onnx.ModelProto, seeds=range(10, 14)) -> float:
    sig = noise = 0.0
    for s in seeds:
        feed = _feed(s)
        a, b = run(model, feed)[0].astype(np.float64), run(q, feed)[0]
        sig, noise = sig + float(np.square(a).sum()), noise + float(np.square(a - b).sum())
    return pow2.sqnr_db(sig, noise)


@pytest.mark.parametrize("pool", [True, False])
def test_aligned_model_is_exact_power_of_two_and_closer_to_float(pool):
    model = _net(top=4.3, pool=pool)
    calib = [_feed(s) for s in range(4)]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, pair_safe=False))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, pair_safe=False, align_scales=False))
    onnx.checker.check_model(on, full_check=True)
    aligned = rep.summary["scale_alignment"]["aligned"]
    assert rep.summary["scales_aligned"] == len(aligned) >= 1
    assert all(a["factor"] in [round(f, 6) for f in FACTORS[1:]] and a["gain_db"] >= 0.1 for a in aligned)
    assert all(np.log2(s) == np.round(np.log2(s)) for s in _scales(on))  # every scale a power of two
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in on.graph.initializer}
    assert all(not np.any(inits[n.input[2]]) for n in on.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2)
    gain = _sqnr(model, on) - _sqnr(model, off)
    assert gain > 0.2, gain  # a wrong factor anywhere would cost tens of dB


def test_a_residual_add_joins_both_branches_into_one_domain():
    """Relu(conv0) and conv1's output meet in an Add: one factor for r, conv1's output and the sum (conv1 both
    reads and makes the domain: its weights end as they were)."""
    b = Builder(2)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    s = b.node("Add", [r, b.conv(r, 8, 8)])
    model = b.model({"x": X}, [b.conv(b.node("Relu", [s]), 8, 4)])
    calib = [_feed(s) for s in range(4)]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, align_scales=False))
    onnx.checker.check_model(on, full_check=True)
    entries = rep.summary["scale_alignment"]["aligned"] + rep.summary["scale_alignment"]["refused"]
    assert any(e["tensors"] >= 3 for e in entries), entries  # r, the sum (and its Relu): one domain
    assert _sqnr(model, on) > _sqnr(model, off) - 0.5 and _sqnr(model, on) > 25


def _hardswish_net() -> onnx.ModelProto:
    b = Builder(4)
    h = b.node("HardSwish", [b.conv("x", 3, 8)])
    return b.model({"x": X}, [b.conv(b.node("HardSwish", [b.conv(h, 8, 8)]), 8, 4)], opset=14)


def test_float_islands_take_the_factor_in_a_product_of_their_own():
    """Conv -> HardSwish -> Conv: the conv output's readers take 1/a, the HardSwish output a, each as a Mul
    inside the float island; the network is the same function."""
    model = _hardswish_net()
    calib = [_feed(s) for s in range(4)]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, pair_safe=False, align_islands=True))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, pair_safe=False,
                                                                 align_scales=False))
    onnx.checker.check_model(on, full_check=True)
    muls = [n for n in on.graph.node if n.op_type == "Mul" and "/align" in n.name]
    assert rep.summary["scales_aligned"] >= 1 and 1 <= len(muls) <= 2 * rep.summary["scales_aligned"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in on.graph.initializer}
    assert all(inits[m.input[1]].shape == () and 0.5 < inits[m.input[1]] < 2 for m in muls)
    assert all(np.log2(s) == np.round(np.log2(s)) for s in _scales(on))
    assert _sqnr(model, on) > _sqnr(model, off) - 0.3 and _sqnr(model, on) > 25


@pytest.mark.parametrize("cfg", [{}, {"align_islands": True, "ort_kernels": True}])
def test_without_islands_a_function_reader_is_refused_with_the_reason(cfg):
    """The default, and integer islands (ort_kernels): HardSwish's input and output keep their scales."""
    _, rep = quantize(_hardswish_net(), iter([_feed(s) for s in range(3)]),
                      config=QuantizeConfig(report_samples=0, **cfg))
    reasons = [r["reason"] for r in rep.summary["scale_alignment"]["refused"]]
    assert any("read by HardSwish" in why for why in reasons), reasons


def test_a_graph_output_domain_is_quantized_aligned_and_handed_back_unscaled():
    """The last Conv writes the graph output: its quantized output is factor x the float one inside, and a Mul
    by 1/factor after the last DequantizeLinear writes the output under its own name."""
    model = _net(top=4.3, pool=False)
    out_name = model.graph.output[0].name
    calib = [_feed(s) for s in range(4)]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0))
    onnx.checker.check_model(on, full_check=True)
    assert [o.name for o in on.graph.output] == [out_name]
    (last,) = [n for n in on.graph.node if out_name in n.output]
    if any(a["tensor"] == out_name for a in rep.summary["scale_alignment"]["aligned"]):
        assert last.op_type == "Mul" and last.name.endswith("/unalign")
    assert _sqnr(model, on) > 25


def test_a_weight_shared_by_layers_of_one_domain_is_scaled_once():
    """Two Convs with one weight read the same domain (an unrolled RNN's input projections): the weight takes
    1/factor once; shared with a layer outside the domain it is refused."""
    b = Builder(6)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    w = b.const("shared.weight", (b.rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32))
    p1 = b.node("Conv", [r, w], pads=[1, 1, 1, 1])
    p2 = b.node("Conv", [b.node("MaxPool", [r], kernel_shape=[1, 1]), w], pads=[1, 1, 1, 1])
    model = b.model({"x": X}, [b.node("Add", [p1, p2])])
    calib = [_feed(s) for s in range(4)]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0))
    onnx.checker.check_model(on, full_check=True)
    assert _sqnr(model, on) > 25
    from onnxsq.passes.quantize.align import Domain, weight_powers

    class N:  # two layers reading one weight, both sinks
        def __init__(self, w):
            self.inputs = [None, w]

    t = type("T", (), {"name": "w", "outputs": []})()
    n1, n2 = N(t), N(t)
    assert weight_powers(Domain(sinks=[n1, n2])) == {"w": -1}
    assert weight_powers(Domain(sources=[n1], sinks=[n1])) == {"w": 0}


def test_fast_effort_and_the_flag_turn_it_off():
    calib = [feeds_for(X, seed=s) for s in range(3)]
    for cfg in (QuantizeConfig(effort="fast", report_samples=0), QuantizeConfig(align_scales=False, report_samples=0)):
        _, rep = quantize(_net(), iter(calib), config=cfg)
        assert "scales_aligned" not in rep.summary


def test_a_layernorm_ends_one_domain_and_starts_the_next():
    """LN(a x) with epsilon a**2 eps is LN(x), and its scale and bias times b make b LN(x): the MatMul output
    it reads and its own output align (a transformer's residual stream), the float function unchanged."""
    from builders import layernorm_block

    from onnxsq.passes.quantize.aligned_float import aligned_float_model

    model = layernorm_block()
    rng = np.random.default_rng(1)
    calib = [{"x": (rng.standard_normal((1, 12, 16)) * 1.3).astype(np.float32)} for _ in range(6)]
    q, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=2, pair_safe=False))
    onnx.checker.check_model(q, full_check=True)
    aligned = {a["tensor"]: a["factor"] for a in rep.summary["scale_alignment"]["aligned"]}
    (ln,) = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert ln.input[0] in aligned and ln.output[0] in aligned, rep.summary["scale_alignment"]
    (qln,) = [n for n in q.graph.node if n.op_type == "LayerNormalization"]
    eps = onnx.helper.get_attribute_value(next(a for a in qln.attribute if a.name == "epsilon"))
    assert eps == pytest.approx(1e-3 * aligned[ln.input[0]] ** 2, rel=1e-6)
    assert all(np.log2(s) == np.round(np.log2(s)) for s in _scales(q))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, pair_safe=False,
                                                                align_scales=False))
    feeds = [{"x": (rng.standard_normal((1, 12, 16)) * 1.3).astype(np.float32)} for _ in range(4)]

    def sqnr(qm: onnx.ModelProto) -> float:
        ref = np.concatenate([run(model, f)[0].ravel() for f in feeds]).astype(np.float64)
        got = np.concatenate([run(qm, f)[0].ravel() for f in feeds])
        return pow2.sqnr_db(float(np.square(ref).sum()), float(np.square(ref - got).sum()))

    assert sqnr(q) > sqnr(off)
    carried = aligned_float_model(model, calib, QuantizeConfig(report_samples=0))
    for f in feeds:  # the factors carried by the weights and epsilon: the same function
        np.testing.assert_allclose(run(carried, f)[0], run(model, f)[0], rtol=1e-4, atol=1e-5)


def test_island_outputs_align_by_default_and_their_inputs_only_with_align_islands():
    """Conv -> HardSwish -> Conv: by default the HardSwish output takes its factor as a product after the function
    (inside the island), its input is refused (read by HardSwish); --no-align-island-outputs refuses both."""
    model = _hardswish_net()
    calib = [_feed(s) for s in range(4)]

    def run_with(**cfg):
        q, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, pair_safe=False, **cfg))
        onnx.checker.check_model(q, full_check=True)
        return q, rep.summary.get("scale_alignment")

    q, sa = run_with()  # (the offset lift reads the output through a Pad of its offset: the Pad takes it too)
    made = [n for n in q.graph.node if n.op_type == "Mul" and n.name.endswith("/align")]
    assert made and all(any(p.op_type == "HardSwish" and p.output[0] == m.input[0] for p in q.graph.node)
                        for m in made), [n.name for n in q.graph.node]
    assert any("read by HardSwish" in r["reason"] for r in sa["refused"])
    assert not any("made by HardSwish" in r["reason"] for r in sa["refused"])
    assert all(np.log2(s) == np.round(np.log2(s)) for s in _scales(q))
    off, sa_off = run_with(align_island_outputs=False)
    assert any("made by HardSwish" in r["reason"] for r in sa_off["refused"])
    assert not [n for n in off.graph.node if n.op_type == "Mul" and n.name.endswith("/align")]
    plain, _ = run_with(align_scales=False)
    assert _sqnr(model, q) > _sqnr(model, plain) - 0.3
