"""onnxsq.verify: seeded feeds, .npz feeds, and output comparison against exact oracles."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.errors import DataError, UnsupportedModelError, VerificationError
from onnxsq.verify import compare_models, default_tolerance, input_shape, load_feeds, random_feeds

pytest.importorskip("onnxruntime")


def _shift_bias(model: onnx.ModelProto, delta: float) -> onnx.ModelProto:
    """The same model with delta added to the conv bias: every output element moves by exactly delta."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name == "conv.bias":
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(delta), t.name))
    return out


def _mixed_inputs_model() -> onnx.ModelProto:
    """Inputs of several dtypes and symbolic dims; one initializer also listed as a graph input."""
    inputs = [
        helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 3, "h"]),
        helper.make_tensor_value_info("i", TensorProto.INT64, [2, 2]),
        helper.make_tensor_value_info("b", TensorProto.BOOL, [4]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
    ]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"], name=f"id_{n}") for n in ("f", "i", "b", "w")]
    outputs = [helper.make_tensor_value_info(f"{n}_out", TensorProto.UNDEFINED, None) for n in ("f", "i", "b", "w")]
    graph = helper.make_graph(nodes, "mixed", inputs, outputs,
                              initializer=[numpy_helper.from_array(np.ones(1, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


# --- feeds -----------------------------------------------------------------------------------------

def test_random_feeds_are_seeded_and_typed():
    model = _mixed_inputs_model()
    a, b, c = random_feeds(model, seed=1), random_feeds(model, seed=1), random_feeds(model, seed=2)
    assert set(a) == {"f", "i", "b"}, "an initializer listed as input is not fed"
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["f"], c["f"])
    assert a["f"].dtype == np.float32 and a["f"].shape == (1, 3, 32)  # batch → 1, other symbols → 32
    assert a["i"].dtype == np.int64 and a["i"].shape == (2, 2) and a["i"].min() >= 0
    assert a["b"].dtype == np.bool_
    assert random_feeds(model, batch=5)["f"].shape == (5, 3, 32)
    assert random_feeds(model, attempt=1)["f"].shape == (1, 3, 64)
    assert random_feeds(model, input_shapes={"f": (2, 3, 5)})["f"].shape == (2, 3, 5)
    assert random_feeds(model, dims={"f": (2, 3, 4)})["f"].shape == (2, 3, 4)


def test_input_shape_defaults_unknown_dims():
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, None, 5])
    assert input_shape(vi) == [1, 3, 1, 5]
    assert input_shape(vi, default_dim=7) == [7, 3, 7, 5]


def test_load_feeds_from_npz_and_directories(tmp_path, conv_model):
    model = conv_model()
    x = np.zeros((1, 3, 8, 8), np.float32)
    np.savez(tmp_path / "named.npz", input=x)
    np.savez(tmp_path / "unnamed.npz", x + 1)  # one array, one input: taken whatever its key
    assert len(load_feeds(tmp_path / "named.npz", model)) == 1
    feeds = load_feeds(tmp_path, model)
    assert [float(f["input"].mean()) for f in feeds] == [0.0, 1.0]  # sorted by file name


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "garbage", "wrong_name"])
def test_load_feeds_errors_are_one_line(kind, tmp_path):
    model = _mixed_inputs_model()
    path = tmp_path / "x.npz"
    if kind == "empty_dir":
        path = tmp_path / "d"
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"not an npz")
    elif kind == "wrong_name":
        np.savez(path, f=np.zeros((1, 3, 8), np.float32), other=np.zeros(2))
    with pytest.raises(DataError) as info:
        load_feeds(path, model)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    if kind == "wrong_name":
        assert "i, b" in str(info.value)


# --- comparison ------------------------------------------------------------------------------------

def test_identical_models_match_exactly(conv_model):
    model = conv_model()
    result = compare_models(model, model, samples=3)
    assert result.ok and result.samples == 3
    assert [o.name for o in result.outputs] == ["output"]
    assert result.max_abs == 0.0 and result.max_rel == 0.0
    assert (result.rtol, result.atol) == (1e-4, 1e-5)


def test_error_statistics_against_an_exact_oracle(conv_model):
    a = conv_model(bn=False, relu=False)
    b = _shift_bias(a, 1e-3)
    result = compare_models(a, b, samples=2, seed=4)
    (out,) = result.outputs
    assert not result.ok and not out.ok
    assert out.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert out.mean_abs == pytest.approx(1e-3, rel=1e-3)
    # max_rel: the same oracle computed here.
    feeds = [random_feeds(a, seed=4), random_feeds(a, seed=5)]
    from onnxsq.runtime import make_session

    ya = [make_session(a).run(None, f)[0].astype(np.float64) for f in feeds]
    yb = [make_session(b).run(None, f)[0].astype(np.float64) for f in feeds]
    rel = max(float((np.abs(p - q) / np.maximum(np.abs(p), 1e-12)).max()) for p, q in zip(ya, yb))
    assert out.max_rel == pytest.approx(rel)
    assert compare_models(a, b, seed=4, atol=2e-3).ok
    assert not compare_models(a, b, seed=4, atol=5e-4).ok


def test_explicit_feeds_and_paths(tmp_path, conv_model):
    a = conv_model()
    path = tmp_path / "a.onnx"
    path.write_bytes(a.SerializeToString())
    feeds = [{"input": np.ones((2, 3, 8, 8), np.float32)}]
    result = compare_models(str(path), a, feeds=feeds)
    assert result.ok and result.samples == 1


def test_report_and_failure_message(conv_model):
    a = conv_model(bn=False, relu=False)
    bad = compare_models(a, _shift_bias(a, 0.5))
    report = bad.to_report()
    assert report.pass_name == "verify"
    (c,) = report.candidates
    assert (c.name, c.action) == ("output", "mismatch") and c.details["max_abs"] == pytest.approx(0.5, rel=1e-4)
    assert report.summary["ok"] is False and report.summary["samples"] == 2
    msg = bad.failure_message()
    assert "\n" not in msg and "output (max abs 0.5" in msg and "atol 1e-05" in msg
    good = compare_models(a, a)
    assert good.failure_message() == "" and good.to_report().candidates[0].action == "ok"


def test_default_tolerance_follows_the_output_dtype(conv_model):
    assert default_tolerance(conv_model()) == (1e-4, 1e-5)
    assert default_tolerance(conv_model(dtype=np.float16)) == (1e-2, 1e-2)
    assert default_tolerance(conv_model(dtype=np.float64)) == (1e-9, 1e-10)


def test_different_outputs_are_a_verification_error(conv_model):
    a = conv_model()
    b = onnx.ModelProto()
    b.CopyFrom(a)
    b.graph.node[-1].output[0] = "renamed"
    b.graph.output[0].name = "renamed"
    with pytest.raises(VerificationError, match="different outputs"):
        compare_models(a, b)


def test_different_shapes_are_a_verification_error(conv_model):
    a = conv_model(cin=3, cout=4)
    b = conv_model(cin=3, cout=5)
    with pytest.raises(VerificationError, match="shapes differ"):
        compare_models(a, b)


def test_inputs_that_do_not_fit_are_a_data_error(conv_model):
    a = conv_model()
    with pytest.raises(DataError, match="onnxruntime failed to run") as info:
        compare_models(a, a, feeds=[{"input": np.zeros((1, 5, 8, 8), np.float32)}])
    assert "\n" not in str(info.value)


def test_a_model_onnxruntime_refuses_is_one_line(conv_model):
    a = conv_model()
    b = conv_model()
    b.graph.node[0].op_type = "NoSuchOp"  # unchecked proto straight to onnxruntime
    with pytest.raises(UnsupportedModelError, match="model B: onnxruntime cannot load it") as info:
        compare_models(a, b)
    assert "\n" not in str(info.value)
