"""Range choice through the reader's function (onnxsq.passes.quantize.through): which tensors qualify, the
histogram error against the squared error measured directly, and the pass using it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.calibration import pow2
from onnxsq.calibration.stats import TensorStats, mse_errors
from onnxsq.params import read_params
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.through import _sigmoid, reader_functions, through_errors, through_format
from onnxsq.runtime import make_session


def _silu_net(seed: int = 0, shift: float = -4.0) -> onnx.ModelProto:
    """Conv → SiLU (Sigmoid, Mul) → Conv → Sigmoid; the first conv's outputs lean negative (bias ``shift``)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1.0, (8, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(np.full(8, shift, np.float32), "b0"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c0"], ["s0"], name="sig0"),
             helper.make_node("Mul", ["c0", "s0"], ["a0"], name="mul0"),
             helper.make_node("Conv", ["a0", "w1"], ["c1"], name="conv1"),
             helper.make_node("Sigmoid", ["c1"], ["y"], name="sig1")]
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def _calib(n: int = 6, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _stats(x: np.ndarray) -> TensorStats:
    st = TensorStats(histogram=True)
    st.update(x)
    return st


def _q(x: np.ndarray, shift: int, signed: bool) -> np.ndarray:
    qmin, qmax = pow2.int_range(8, signed)
    return np.clip(np.round(np.ldexp(x, shift)), qmin, qmax) * np.ldexp(1.0, -shift)


def test_the_tensors_read_by_one_function_and_only_those():
    graph = gs.import_onnx(_silu_net())
    found = reader_functions(graph, ["x", "c0", "s0", "a0", "c1", "y"])
    assert set(found) == {"c0", "c1"}  # SiLU's input and the Sigmoid's; y is a graph output, a0 a Conv's input
    v = np.linspace(-6, 6, 13)
    np.testing.assert_allclose(found["c0"](v), v * _sigmoid(v))
    np.testing.assert_allclose(found["c1"](v), 1 / (1 + np.exp(-v)))
    graph.nodes.append(gs.Node("Relu", inputs=[graph.tensors()["c0"]], outputs=[gs.Variable("extra")]))
    assert "c0" not in reader_functions(graph, ["c0"])  # another reader: x's own error counts again


def test_a_hardswish_op_reader_is_its_function():
    """opset 14's HardSwish (PP-OCRv5's backbone): x * clip(x/6 + 1/2, 0, 1), as onnxruntime computes it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("HardSwish", ["r"], ["y"])]
    g = helper.make_graph(nodes, "hs", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    found = reader_functions(gs.import_onnx(model), ["x", "r"])
    assert set(found) == {"r"}  # x's reader is the Relu
    v = np.linspace(-5, 5, 21, dtype=np.float32).reshape(1, -1)
    hs = helper.make_graph([helper.make_node("HardSwish", ["x"], ["y"])], "h",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 21])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 21])])
    ref = make_session(helper.make_model(hs, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
                       .SerializeToString()).run(None, {"x": v})[0]
    np.testing.assert_allclose(found["r"](v.astype(np.float64)), ref, rtol=1e-6, atol=1e-7)


def test_through_the_identity_it_is_the_histogram_mse():
    x = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 3
    st = _stats(x)
    for signed in (True, False):
        ours = through_errors(st, 8, signed, lambda v: v)
        ref = mse_errors(st, 8, signed)
        assert [s for s, _ in ours] == [s for s, _ in ref]
        np.testing.assert_allclose([e for _, e in ours], [e for _, e in ref], rtol=1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_the_histogram_error_is_the_squared_error_through_silu(signed):
    rng = np.random.default_rng(2)  # a long negative tail, as pre-SiLU conv outputs have
    x = np.concatenate([-np.abs(rng.normal(0, 12, 30000)), np.abs(rng.normal(0, 2.5, 30000))]).astype(np.float32)
    silu = lambda v: v * _sigmoid(v)  # noqa: E731
    st = _stats(x)
    for shift, err in through_errors(st, 8, signed, silu):
        real = float(np.sum(np.square(silu(x.astype(np.float64)) - silu(_q(x.astype(np.float64), shift, signed)))))
        assert err == pytest.approx(real, rel=0.15), shift


def test_silu_takes_a_finer_shift_than_its_input_alone_and_loses_less():
    rng = np.random.default_rng(3)
    x = np.concatenate([-np.abs(rng.normal(0, 12, 30000)), np.abs(rng.normal(0, 2.5, 30000))]).astype(np.float64)
    silu = lambda v: v * _sigmoid(v)  # noqa: E731
    st = _stats(x.astype(np.float32))
    plain = min(mse_errors(st, 8, True), key=lambda e: e[1])[0]
    shift, signed = through_format(st, 8, silu)
    assert shift > plain

    def real(s: int, sg: bool) -> float:
        return float(np.mean(np.square(silu(x) - silu(_q(x, s, sg)))))

    assert real(shift, signed) < 0.5 * real(plain, True)


def test_the_pass_chooses_through_the_reader_and_says_so(tmp_path):
    model, calib = _silu_net(), _calib()
    # (a0 as it is: the offset lift would quantize its lifted copy instead)
    q, report = quantize(model, calib, config=QuantizeConfig(report_samples=2, offset_outputs=False),
                         params_out=tmp_path / "p.json")
    plain, plain_report = quantize(model, calib, config=QuantizeConfig(report_samples=2, through_readers=False,
                                                                       offset_outputs=False),
                                   params_out=tmp_path / "plain.json")
    onnx.checker.check_model(q)
    make_session(q).run(None, calib[0])
    ours, theirs = read_params(tmp_path / "p.json"), read_params(tmp_path / "plain.json")
    assert ours["c0"].estimator == "auto (through reader)" and theirs["c0"].estimator == "auto"
    assert ours["a0"].estimator == theirs["a0"].estimator == "auto"  # read by a Conv: its own error
    assert ours["c0"].shift > theirs["c0"].shift  # the negative tail is clipped: SiLU flattens it
    assert ours["c0"].scale == np.ldexp(1.0, -int(ours["c0"].shift))
    assert report.summary["output_sqnr_db"] > plain_report.summary["output_sqnr_db"]


def test_score_maps_reach_their_sigmoid_through_moves():
    """A detector's per-level class maps are reshaped and concatenated before one Sigmoid: each map's error
    is the Sigmoid's (an elementwise function after moves is the same function of each element); the box
    maps, read by a Mul after their Concat, are not."""
    from builders import decoded_detector_head

    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(decoded_detector_head()))
    convs = [n for n in graph.nodes if n.op == "Conv"]
    names = [t.name for n in convs for t in n.outputs] + [t.name for n in graph.nodes if n.op == "Concat"
                                                         for t in n.outputs]
    found = reader_functions(graph, names)
    assert len(found) == 3  # the two class convs and their Concat
    cat = next(t for t in found if graph.tensors()[t].inputs[0].op == "Concat")
    assert [n.op for n in graph.tensors()[cat].outputs] == ["Sigmoid"]
    assert sum(t.startswith("conv") for t in found) == 2
    v = np.linspace(-6, 6, 13)
    for f in found.values():
        np.testing.assert_allclose(f(v), _sigmoid(v))
    graph.nodes.append(gs.Node("Relu", inputs=[graph.tensors()[cat]], outputs=[gs.Variable("extra")]))
    assert reader_functions(graph, names).keys().isdisjoint(found)  # one more reader: no one function


def _gelu_net(style: str, sqrt2: float = 1.4142135) -> onnx.ModelProto:
    """x → Relu-free Conv → GELU spelled as PyTorch (``x/√2``, Erf, +1, ×x, ×0.5), paddle2onnx
    (``x·(1/√2)``, Erf, +1, (x·0.5)·…) or the opset-20 ``Gelu`` op → y."""
    rng = np.random.default_rng(5)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    inits = [c("w", rng.normal(0, 1, (4, 3, 1, 1))), c("k", sqrt2 if style == "torch" else 1 / sqrt2),
             c("one", 1.0), c("half", 0.5)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"], name="conv")]
    if style == "op":
        nodes.append(helper.make_node("Gelu", ["t"], ["y"]))
    else:
        nodes += [helper.make_node("Div" if style == "torch" else "Mul", ["t", "k"], ["a"]),
                  helper.make_node("Erf", ["a"], ["e"]), helper.make_node("Add", ["e", "one"], ["h"])]
        nodes += [helper.make_node("Mul", ["t", "h"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])] \
            if style == "torch" else [helper.make_node("Mul", ["t", "half"], ["m"]),
                                      helper.make_node("Mul", ["m", "h"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    opset = 20 if style == "op" else 13
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9 if opset == 20 else 7)


@pytest.mark.parametrize("style", ["torch", "paddle", "op"])
def test_gelu_spellings_are_one_function_as_onnxruntime_computes_it(style):
    model = _gelu_net(style)
    found = reader_functions(gs.import_onnx(model), ["x", "t"])
    assert set(found) == {"t"}
    x = np.random.default_rng(6).normal(0, 2, (1, 3, 4, 4)).astype(np.float32)
    y = make_session(model.SerializeToString()).run(None, {"x": x})[0]
    cut = helper.make_graph([model.graph.node[0]], "c", list(model.graph.input),
                            [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 4, 4])],
                            list(model.graph.initializer))
    t = make_session(helper.make_model(cut, opset_imports=list(model.opset_import), ir_version=model.ir_version)
                     .SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(found["t"](t.astype(np.float64)), y, rtol=1e-5, atol=1e-6)


def test_a_near_gelu_is_not_one():
    assert reader_functions(gs.import_onnx(_gelu_net("torch", sqrt2=2.0)), ["t"]) == {}  # x/2: not erf(x/√2)


def test_erf_matches_math_erf():
    import math

    from onnxsq.passes.quantize.through import _erf

    v = np.concatenate([np.linspace(-7, 7, 2001), [0.0, -0.0, 1e-8]])
    np.testing.assert_allclose(_erf(v), [math.erf(z) for z in v], atol=2e-7)
    assert _erf(np.float64(3.0)).shape == ()


def _prelu_net(slope: np.ndarray | None) -> onnx.ModelProto:
    """Conv → PRelu with a constant slope of 4 channels (LeakyRelu where ``slope`` is None) → Conv."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 1.0, (4, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(0, 0.3, (2, 4, 1, 1)).astype(np.float32), "w1")]
    act = helper.make_node("LeakyRelu", ["c0"], ["a0"], alpha=0.1)
    if slope is not None:
        inits.append(numpy_helper.from_array(slope.astype(np.float32).reshape(4, 1, 1), "slope"))
        act = helper.make_node("PRelu", ["c0", "slope"], ["a0"])
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), act,
             helper.make_node("Conv", ["a0", "w1"], ["y"])]
    graph = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


@pytest.mark.parametrize("slope", [None, np.array([0.25, -0.5, 0.1, 0.0])])
def test_a_leaky_reader_scales_the_negative_half_by_its_steepest_slope(slope):
    """LeakyRelu's alpha, a PRelu's largest |slope| (the histogram mixes the channels: the steepest one's clipping
    is what the bound must not let through); positively homogeneous, so scale alignment carries it."""
    from onnxsq.passes.quantize.through import homogeneous

    found = reader_functions(gs.import_onnx(_prelu_net(slope)), ["x", "c0", "a0"])
    assert set(found) == {"c0"}
    a = 0.1 if slope is None else 0.5
    v = np.linspace(-4, 4, 9)
    np.testing.assert_allclose(found["c0"](v), np.where(v >= 0, v, a * v))
    assert homogeneous(found["c0"]) and not homogeneous(_sigmoid)
    rng = np.random.default_rng(5)  # a long negative tail: the clipping there costs a**2 of what it would
    x = np.concatenate([-np.abs(rng.normal(0, 12, 30000)), np.abs(rng.normal(0, 2.5, 30000))])
    st = _stats(x.astype(np.float32))
    for shift, err in through_errors(st, 8, True, found["c0"]):
        real = float(np.sum(np.square(found["c0"](x) - found["c0"](_q(x, shift, True)))))
        assert err == pytest.approx(real, rel=0.15), shift
    plain, (shift, signed) = min(mse_errors(st, 8, True), key=lambda e: e[1])[0], through_format(st, 8, found["c0"])
    assert shift >= plain and (slope is not None or shift > plain)  # alpha 0.1: the tail clips

    def real(s: int, sg: bool) -> float:
        return float(np.mean(np.square(found["c0"](x) - found["c0"](_q(x, s, sg)))))

    assert real(shift, signed) <= real(plain, True)


def test_a_prelu_with_a_slope_given_at_run_time_is_no_reader_function():
    g = gs.import_onnx(_prelu_net(np.array([0.25, 0.5, 0.1, 0.2])))
    fed = gs.Variable("slope_in", dtype=np.float32, shape=(4, 1, 1))
    g.inputs.append(fed)
    next(n for n in g.nodes if n.op == "PRelu").inputs[1] = fed
    assert reader_functions(g, ["c0"]) == {}
