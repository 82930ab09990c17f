"""The threshold pass on tiny models: which layers, exact oracles, structure, onnxruntime, options."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.errors import InvalidOptionError
from onnxsq.passes.threshold import ThresholdConfig, layer_class, threshold, weight_layout
from onnxsq.passes.threshold.search import threshold_array
from onnxsq.runtime import make_session
from onnxsq.verify import random_feeds


def _w(rng, *shape, scale=0.1, dtype=np.float32):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_model(seed: int = 0, dtype=np.float32, opset: int = 13, ir: int = 7) -> onnx.ModelProto:
    """input → conv_a (3→32, low) → conv_b (32→64, mid, weight in a Constant node) → depthwise
    → shared 1×1 pair (one weight, two nodes) → GAP → Gemm (10 outputs); plus a tiny side conv (3→4)."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(_w(rng, 32, 3, 3, 3, dtype=dtype), "wa"),
             numpy_helper.from_array(_w(rng, 64, 1, 3, 3, dtype=dtype), "wdw"),
             numpy_helper.from_array(_w(rng, 64, 64, 1, 1, dtype=dtype), "ws"),
             numpy_helper.from_array(_w(rng, 10, 64, dtype=dtype), "wfc"),
             numpy_helper.from_array(_w(rng, 10, dtype=dtype), "bfc"),
             numpy_helper.from_array(_w(rng, 4, 3, 1, 1, dtype=dtype), "wt")]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Constant", [], ["wb"], name="const_wb",
                         value=numpy_helper.from_array(_w(rng, 64, 32, 3, 3, dtype=dtype), "wb")),
        helper.make_node("Conv", ["ar", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "wdw"], ["dw"], name="conv_dw", group=64, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["dw", "ws"], ["s1"], name="conv_s1"),
        helper.make_node("Conv", ["s1", "ws"], ["s2"], name="conv_s2"),
        helper.make_node("GlobalAveragePool", ["s2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["y"], name="fc", transB=1),
        helper.make_node("Conv", ["x", "wt"], ["t"], name="conv_tiny"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", elem, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", elem, [1, 10]),
                               helper.make_tensor_value_info("t", elem, [1, 4, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(model)
    return model


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def by_name(report):
    return {c.name: c for c in report.candidates}


def test_layers_chosen_and_skipped_with_reasons():
    model = make_model()
    _, report = threshold(model)
    c = by_name(report)
    assert [c[n].action for n in ("conv_a", "conv_b", "conv_s1")] == ["thresholded"] * 3
    assert c["conv_a"].details["class"] == "low" and c["conv_b"].details["class"] == "mid"
    assert c["conv_a"].details["ni"] == 3 and c["conv_a"].details["no"] == 32
    assert "depthwise" in c["conv_dw"].reason
    assert "shared with conv_s1" in c["conv_s2"].reason
    assert "too small" in c["conv_tiny"].reason
    assert "opted in" in c["fc"].reason
    assert all(c.reason for c in report.skipped())
    assert len(report.candidates) == 7


@pytest.mark.parametrize("search", ["exact", "grid"])
@pytest.mark.parametrize("channelwise", [False, True])
def test_weights_match_the_numpy_function(search, channelwise):
    model = make_model()
    cfg = dict(fraction_low=0.4, fraction_mid=0.8, value_max=0.2, value_maxratio=0.5, search=search,
               channelwise=channelwise, step_factor=1e-4)
    out, report = threshold(model, **cfg)
    before, after = weights(model), weights(out)
    for name, frac in (("wa", 0.4), ("wb", 0.8), ("ws", 0.8)):
        expect, _ = threshold_array(before[name], frac, value_max=0.2, value_maxratio=0.5, search=search,
                                    channelwise=channelwise, step_factor=1e-4)
        assert np.array_equal(after[name], expect), name
        assert np.count_nonzero(after[name] == 0) / after[name].size <= frac
    for name in ("wdw", "wfc", "bfc", "wt"):
        assert np.array_equal(after[name], before[name])
    assert report.summary["layers thresholded"] == 3


def test_exact_oracle_independent_of_the_search_module():
    """conv_b, layerwise exact: the largest magnitude below the cap whose zero fraction is <= 0.8."""
    model = make_model(seed=3)
    w = weights(model)["wb"]
    a = np.sort(np.abs(w).ravel().astype(np.float64))
    cap = min(0.2, 0.2 * a[-1])
    k = int(np.floor(0.8 * a.size))
    t = max([v for v in a[:k] if v < min(a[k], cap)], default=0.0)
    out, report = threshold(model)
    new = weights(out)["wb"]
    assert np.array_equal(new, np.where(np.abs(w) <= t, 0, w).astype(w.dtype))
    assert by_name(report)["conv_b"].details["threshold_exact"] == pytest.approx(t)


def test_structure_kept_checker_and_onnxruntime():
    model = make_model(opset=11, ir=6)
    original = model.SerializeToString()
    out, _ = threshold(model, fraction_low=0.9, fraction_mid=0.9)
    assert model.SerializeToString() == original  # the input is not mutated
    onnx.checker.check_model(out)
    assert out.ir_version == 6 and [(o.domain, o.version) for o in out.opset_import] == [("", 11)]
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    assert [t.name for t in out.graph.initializer] == [t.name for t in model.graph.initializer]
    assert out.graph.node[2].op_type == "Constant"  # the Constant-node weight stays a Constant
    feeds = random_feeds(model, seed=1)
    ya = make_session(model).run(None, feeds)
    yb = make_session(out).run(None, feeds)
    assert all(np.all(np.isfinite(y)) for y in yb) and not np.allclose(ya[0], yb[0])
    np.testing.assert_array_equal(ya[1], yb[1])  # the tiny conv was not touched
    # the output equals a model whose weights were set by the numpy oracle
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    w = weights(out)
    for t in ref.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(w[t.name], t.name))
    ref.graph.node[2].attribute[0].t.CopyFrom(numpy_helper.from_array(w["wb"], "wb"))
    for x, y in zip(make_session(ref).run(None, feeds), yb):
        np.testing.assert_allclose(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dtype_kept(dtype):
    model = make_model(dtype=dtype)
    out, _ = threshold(model)
    w = weights(out)
    assert w["wb"].dtype == dtype and np.count_nonzero(w["wb"] == 0) > 0
    onnx.checker.check_model(out)
    if dtype == np.float16:  # onnxruntime has no float64 Conv on the CPU
        make_session(out).run(None, random_feeds(out))


def test_idempotent_and_fraction_zero():
    model = make_model()
    once, _ = threshold(model, channelwise=True)
    twice, report = threshold(once, channelwise=True)
    assert once.SerializeToString() == twice.SerializeToString()
    assert all(c.details["zeros_before"] == c.details["zeros_after"] for c in report.candidates if c.changed)
    zero, _ = threshold(model, fraction_low=0, fraction_mid=0, fraction_high=0)
    assert zero.SerializeToString() == model.SerializeToString()


def test_monotone_in_the_fraction():
    model = make_model()
    prev = None
    for f in (0.1, 0.3, 0.6, 0.9):
        zeros = weights(threshold(model, fraction_mid=f, value_maxratio=1.0)[0])["wb"] == 0
        assert prev is None or np.all(prev <= zeros)
        prev = zeros


def test_overrides_excludes_and_warnings():
    model = make_model()
    out, report = threshold(model, layers=[("conv_*", 0.3), ("w?", 0.5), ("conv_dw", 0.25), ("nothing*", 0.1)],
                            excludes=["conv_s*"])
    c = by_name(report)
    assert c["conv_a"].details["fraction"] == 0.5 and c["conv_a"].details["class"] == "override"  # last wins
    assert c["conv_dw"].action == "thresholded"  # an explicit override beats the depthwise rule
    assert c["conv_tiny"].details["fraction"] == 0.5
    assert "excluded" in c["conv_s1"].reason and "excluded" in c["conv_s2"].reason
    assert [w for w in report.warnings if "matched no" in w] == ["layer pattern 'nothing*' matched no Conv layer"]
    assert np.array_equal(weights(out)["ws"], weights(model)["ws"])


def test_opt_in_gemm():
    model = make_model()
    out, report = threshold(model, ops="Conv,Gemm", fraction_high=0.5)
    fc = by_name(report)["fc"]
    assert fc.action == "thresholded" and fc.details["ni"] == 64 and fc.details["no"] == 10
    assert np.count_nonzero(weights(out)["wfc"] == 0) > 0
    assert np.array_equal(weights(out)["bfc"], weights(model)["bfc"])  # never the bias


def test_global_mode_pools_layers():
    model = make_model()
    out, report = threshold(model, global_fraction=0.6, value_max=1.0, value_maxratio=1.0)
    before, after = weights(model), weights(out)
    pooled = ["wa", "wb", "ws"]
    n = sum(before[k].size for k in pooled)
    zeros = sum(int(np.count_nonzero(after[k] == 0)) for k in pooled)
    allowed = int(np.floor(0.6 * n))
    assert zeros <= allowed and zeros >= allowed - 3  # random weights: essentially no ties
    t = report.summary["global threshold"]
    for k in pooled:  # one threshold for every layer
        killed = (after[k] == 0) & (before[k] != 0)
        assert np.all(np.abs(before[k][killed]) <= t) and np.all(np.abs(before[k][~killed]) > t)
    # fractions differ per layer: the layers with small weights (large fan-in) lose more
    fr = {c.name: c.details["zeros_after"] for c in report.candidates if c.changed}
    assert len(set(fr.values())) == 3


def test_global_caps_hold():
    model = make_model()
    out, report = threshold(model, global_fraction=0.95, value_maxratio=0.1)
    for c in report.candidates:
        if c.changed:
            w0, w1 = weights(model)[c.details["weight"]], weights(out)[c.details["weight"]]
            assert np.all(np.abs(w0[(w1 == 0) & (w0 != 0)]) < c.details["cap"])


def _run(model, feeds):
    return make_session(model).run(None, feeds)[0]


@pytest.mark.parametrize("op,shape,attrs", [
    ("Conv", (8, 2, 3, 3), {"group": 2}),
    ("ConvTranspose", (4, 3, 3, 3), {"group": 2}),
    ("Gemm", (5, 6), {"transB": 1}),
    ("Gemm", (6, 5), {"transB": 0}),
    ("MatMul", (6, 5), {}),
])
def test_weight_layout_rows_are_output_channels(op, shape, attrs):
    """Zero one row of the output-channel view: exactly that output channel of the op becomes 0."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    lay = weight_layout(op, shape, attrs.get("group", 1), attrs.get("transB", 0))
    assert np.array_equal(lay.from_rows(lay.to_rows(w)), w)
    rows = lay.to_rows(w).copy()
    assert rows.shape[0] == lay.no
    rows[1] = 0
    if op in ("Conv", "ConvTranspose"):
        cin = lay.ni
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 5, 5])
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, lay.ni])
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    g = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(lay.from_rows(rows), "w")])
    y = _run(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7),
             {"x": rng.standard_normal([d.dim_value for d in x.type.tensor_type.shape.dim]).astype(np.float32)})
    per_channel = np.abs(np.moveaxis(y, 1, 0)).reshape(lay.no, -1).max(axis=1)
    assert per_channel[1] == 0 and np.all(np.delete(per_channel, 1) > 0)


def test_layer_class():
    assert layer_class(3, 16) is None and layer_class(3, 32) == "low" and layer_class(64, 16) == "low"
    assert layer_class(32, 32) == "mid" and layer_class(256, 511) == "mid" and layer_class(256, 512) == "high"


@pytest.mark.parametrize("kw,msg", [
    ({"fraction_low": 1.5}, "fraction_low"), ({"fraction_mid": -0.1}, "fraction_mid"),
    ({"value_max": -1.0}, "value_max"), ({"value_maxratio": float("nan")}, "value_maxratio"),
    ({"step_factor": 0.0}, "step_factor"), ({"search": "fast"}, "search"), ({"ops": "Conv,Relu"}, "ops"),
    ({"global_fraction": 2.0}, "global_fraction"), ({"layers": [("a*", 3.0)]}, "a*"),
    ({"global_fraction": 0.5, "channelwise": True}, "channelwise"),
    ({"global_fraction": 0.5, "search": "grid"}, "exact"), ({"bogus": 1}, "bogus"),
])
def test_bad_options(kw, msg):
    with pytest.raises(InvalidOptionError) as e:
        threshold(make_model(), **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_config_normalizes():
    cfg = ThresholdConfig(ops=["Conv", "Gemm"], layers={"x*": 0.5}, excludes="y*")
    assert cfg.ops == frozenset({"Conv", "Gemm"}) and cfg.layers == (("x*", 0.5),) and cfg.excludes == ("y*",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fraction_low = 0.1


@pytest.mark.parametrize("kw", [{}, {"global_fraction": 0.5}])
def test_non_finite_weights_are_skipped(kw):
    model = make_model()
    t = next(t for t in model.graph.initializer if t.name == "ws")
    w = numpy_helper.to_array(t).copy()
    w[0, 0, 0, 0] = np.nan
    t.CopyFrom(numpy_helper.from_array(w, "ws"))
    out, report = threshold(model, **kw)
    c = by_name(report)
    assert c["conv_s1"].action == "skipped" and "NaN" in c["conv_s1"].reason
    assert c["conv_b"].action == "thresholded" and report.summary["layers thresholded"] == 2
    assert np.array_equal(weights(out)["ws"], w, equal_nan=True)


def test_nothing_to_threshold_warns():
    out, report = threshold(make_model(), excludes=["*"])
    assert report.summary["layers thresholded"] == 0 and any("no layer" in w for w in report.warnings)
    assert out.SerializeToString() == make_model().SerializeToString()
