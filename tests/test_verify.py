"""onnxsq.verify: seeded feeds, .npz feeds, and output comparison against exact oracles."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_shapes import shared_symbol_model, spatial_after, strided_model  # pythonpath = tests

from onnxsq.errors import CheckNotRunError, DataError, UnsupportedModelError, VerificationError
from onnxsq.verify import compare_models, default_tolerance, input_shape, load_feeds, random_feeds

pytest.importorskip("onnxruntime")


def _shift_bias(model: onnx.ModelProto, delta: float) -> onnx.ModelProto:
    """The same model with delta added to the conv bias: every output element moves by exactly delta."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name == "conv.bias":
            out.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(delta), t.name)
            )
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


# --- random inputs of a shape the model takes (dynamic dims) ----------------------------------------

def test_dynamic_model_runs_at_the_image_size():
    model = strided_model(spatial_after(224))
    result = compare_models(model, model)
    assert result.ok and result.samples == 2
    assert random_feeds(model)["x"].shape == (1, 3, 224, 224)


def test_a_refused_first_size_is_retried_once(caplog):
    model = strided_model(spatial_after(320))  # 224 leaves 27, this one wants 39
    with caplog.at_level(logging.INFO, logger="onnxsq.verify"):
        result = compare_models(model, model)
    assert result.ok
    assert "x:1x3x224x224" in caplog.text and "random inputs x:1x3x320x320" in caplog.text


def test_no_random_shape_runs_is_a_check_not_run_error():
    model = strided_model(spatial_after(143))
    with pytest.raises(CheckNotRunError) as info:
        compare_models(model, model)
    msg = str(info.value)
    assert not isinstance(info.value, VerificationError)
    assert "\n" not in msg and "--input-shape x:1x3xHxW" in msg and msg.endswith("or --no-verify")
    assert "x:1x3x224x224 or x:1x3x320x320" in msg and "could not run" in msg
    assert "differ" not in msg and "mismatch" not in msg
    with pytest.raises(CheckNotRunError, match="or --data FILE.npz$"):
        compare_models(model, model, alternative="--data FILE.npz")


def test_a_given_shape_runs_and_is_never_retried():
    model = strided_model(spatial_after(143))
    assert compare_models(model, model, input_shapes={"x": (1, 3, 143, 143)}).ok
    assert compare_models(model, model, input_shapes={None: (2, 3, 143, 143)}).ok
    with pytest.raises(DataError) as info:
        compare_models(model, model, input_shapes={"x": (1, 3, 224, 224)})
    msg = str(info.value)
    assert "given shape x:1x3x224x224" in msg and "320" not in msg and "\n" not in msg


def test_given_feeds_that_fail_name_their_shape(conv_model):
    a = conv_model()
    with pytest.raises(DataError, match=r"given inputs of shape input:1x5x8x8"):
        compare_models(a, a, feeds=[{"input": np.zeros((1, 5, 8, 8), np.float32)}])


def test_model_b_refusing_what_a_takes_is_a_difference():
    a, b = strided_model(spatial_after(224)), strided_model(spatial_after(143))
    with pytest.raises(VerificationError, match="model B: onnxruntime failed to run it on inputs of shape x:1x3x224"):
        compare_models(a, b)


def test_shared_symbols_and_nhwc_feeds():
    feeds = random_feeds(shared_symbol_model())
    assert feeds["a"].shape == (1, 3, 224, 224) and feeds["b"].shape == (1, 224)
    model = shared_symbol_model()
    assert compare_models(model, model).ok
    nhwc = strided_model(spatial_after(224), nhwc=True)
    assert random_feeds(nhwc)["x"].shape == (1, 224, 224, 3)
    assert compare_models(nhwc, nhwc).ok


def test_paths_retry_too(tmp_path):
    model = strided_model(spatial_after(320))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert compare_models(str(path), str(path)).ok
