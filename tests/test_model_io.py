"""onnxsq.model_io: loading (paths, protos, external data, bad input) and atomic saving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxsq import model_io
from onnxsq.errors import InvalidOptionError, ModelLoadError
from onnxsq.model_io import default_opset, load_model, model_nbytes, opsets, same_file, save_model


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_one_line_naming(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text
    assert str(path) in text


def _checker_rejected(conv_model) -> onnx.ModelProto:
    model = conv_model()
    model.graph.node.append(helper.make_node("NoSuchOp", ["output"], ["junk"], name="junk"))
    return model


# --- loading ---------------------------------------------------------------------------------------

def test_load_from_path_reads_the_model(tmp_path, conv_model):
    model = conv_model(opset=11)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    loaded = load_model(path)
    assert loaded.SerializeToString() == model.SerializeToString()
    assert load_model(str(path)).SerializeToString() == model.SerializeToString()


def test_load_from_proto_copies_and_never_mutates(conv_model):
    model = conv_model()
    before = model.SerializeToString()
    loaded = load_model(model)
    assert loaded is not model
    assert loaded.SerializeToString() == before
    loaded.graph.node[0].name = "changed"
    loaded.graph.initializer[0].raw_data = b"\0" * len(loaded.graph.initializer[0].raw_data)
    assert model.SerializeToString() == before


def test_load_from_proto_checks_it(conv_model):
    with pytest.raises(ModelLoadError, match="rejected by onnx.checker") as info:
        load_model(_checker_rejected(conv_model))
    assert "\n" not in str(info.value)
    assert load_model(_checker_rejected(conv_model), check=False).graph.node[-1].op_type == "NoSuchOp"


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "garbage", "not_a_model", "truncated",
                                  "checker_rejected"])
def test_bad_input_is_one_line_model_load_error(kind, tmp_path, conv_model, untouched):
    path = tmp_path / "bad.onnx"
    good = conv_model().SerializeToString()
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\xff\xfe this is not protobuf \x00\x01\x02" * 10)
    elif kind == "not_a_model":
        path.write_bytes(b"\x08\x07")  # valid protobuf: ir_version 7, no graph, no opset
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "checker_rejected":
        path.write_bytes(_checker_rejected(conv_model).SerializeToString())
    if path.is_file():
        untouched(path)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    _assert_one_line_naming(info.value, path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_any_truncation_is_a_model_load_error(cut, tmp_path, conv_model):
    good = conv_model(cin=4, cout=8).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good[: max(1, int(len(good) * cut))])
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    _assert_one_line_naming(info.value, path)


def test_missing_external_data_is_a_model_load_error(tmp_path, conv_model):
    path = tmp_path / "ext.onnx"
    save_model(conv_model(cin=16, cout=16), path, external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data") as info:
        load_model(path)
    _assert_one_line_naming(info.value, path)


# --- saving ----------------------------------------------------------------------------------------

def test_save_and_load_keep_ir_version_and_opsets(tmp_path, conv_model):
    for opset in (11, 13, 17):
        model = conv_model(opset=opset)
        path = save_model(model, tmp_path / f"m{opset}.onnx")
        back = load_model(path)
        assert back.ir_version == model.ir_version
        assert opsets(back) == {"": opset}
        assert default_opset(back) == opset


def test_external_data_round_trip(tmp_path, conv_model):
    model = conv_model(cin=16, cout=16)  # a 9 KiB weight: over the 1 KiB external-data threshold
    before = model.SerializeToString()
    path = save_model(model, tmp_path / "ext.onnx", external_data=True)
    assert model.SerializeToString() == before, "saving with external data must not touch the caller's proto"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    assert path.stat().st_size < 2048
    back = load_model(path)
    for name, value in _weights(model).items():
        np.testing.assert_array_equal(_weights(back)[name], value)
    # The loaded model is self-contained: it serializes with its data inline.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in back.graph.initializer)
    assert onnx.load_from_string(back.SerializeToString()).graph.initializer[0].raw_data


def test_external_data_runs_in_onnxruntime(tmp_path, conv_model):
    pytest.importorskip("onnxruntime")
    from onnxsq.runtime import make_session

    model = conv_model(cin=16, cout=16)
    path = save_model(model, tmp_path / "ext.onnx", external_data=True)
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    y_file = make_session(str(path)).run(None, {"input": x})[0]
    y_proto = make_session(model).run(None, {"input": x})[0]
    np.testing.assert_array_equal(y_file, y_proto)


def test_large_models_go_external_automatically(tmp_path, conv_model, monkeypatch):
    # The real threshold is ~2 GB; shrink it so the automatic path (save and check) runs on a tiny model.
    monkeypatch.setattr(model_io, "EXTERNAL_THRESHOLD", 4096)
    model = conv_model(cin=16, cout=16)
    assert model_nbytes(model) > 4096
    before = model.SerializeToString()
    checked = load_model(model)  # check_model takes its by-path route for "large" models
    assert model.SerializeToString() == before
    assert checked.SerializeToString() == before, "checking must not move the tensors out of the proto"
    path = save_model(model, tmp_path / "auto.onnx")
    assert (tmp_path / "auto.onnx.data").exists()
    back = load_model(path)
    np.testing.assert_array_equal(_weights(back)["conv.weight"], _weights(model)["conv.weight"])
    small = conv_model()
    assert model_nbytes(small) < 4096
    save_model(small, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()


def test_model_nbytes_is_close_to_the_serialized_size(conv_model):
    model = conv_model(cin=16, cout=16)
    # Tensor payloads exactly, plus the graph; only the initializers' own headers are left out.
    assert 0 <= model.ByteSize() - model_nbytes(model) < 32 * len(model.graph.initializer)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, conv_model):
    path = tmp_path / "out.onnx"
    path.write_bytes(b"old content")
    save_model(conv_model(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
    assert load_model(path).graph.node[0].op_type == "Conv"


def test_rejected_model_never_replaces_the_file(tmp_path, conv_model, untouched):
    path = tmp_path / "out.onnx"
    save_model(conv_model(), path)
    untouched(path)
    with pytest.raises(ModelLoadError, match="onnx.checker"):
        save_model(_checker_rejected(conv_model), path)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path, conv_model, monkeypatch, untouched):
    path = tmp_path / "out.onnx"
    save_model(conv_model(), path)
    untouched(path)

    def disk_full(model, p, *, external):
        Path(p).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_io, "_write", disk_full)
    with pytest.raises(InvalidOptionError, match="No space left") as info:
        save_model(conv_model(seed=5), path)
    _assert_one_line_naming(info.value, path)
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_missing_output_directory_is_one_line(tmp_path, conv_model):
    target = tmp_path / "nope" / "out.onnx"
    with pytest.raises(InvalidOptionError, match="does not exist") as info:
        save_model(conv_model(), target)
    _assert_one_line_naming(info.value, target.parent)
    assert not target.parent.exists()


def test_output_that_is_a_directory_is_refused(tmp_path, conv_model):
    with pytest.raises(InvalidOptionError, match="is a directory"):
        save_model(conv_model(), tmp_path)


def test_same_file(tmp_path):
    a = tmp_path / "a.onnx"
    a.write_bytes(b"x")
    link = tmp_path / "link.onnx"
    os.symlink(a, link)
    assert same_file(a, link)
    assert same_file(a, tmp_path / "." / "a.onnx")
    assert not same_file(a, tmp_path / "b.onnx")
    assert same_file(tmp_path / "new.onnx", tmp_path / "sub" / ".." / "new.onnx")


def test_check_reads_no_weights_yet_catches_truncated_raw_data(conv_model):
    from onnxsq.model_io import check_model, skeleton, weight_arrays

    model = conv_model(cin=16, cout=16)
    sk, w = skeleton(model, min_bytes=64), weight_arrays(model, min_bytes=64)
    assert w and {i.name for i in sk.graph.input} >= set(w) and not set(w) & {i.name for i in sk.graph.initializer}
    check_model(model)
    big = max(model.graph.initializer, key=lambda i: len(i.raw_data))
    big.raw_data = big.raw_data[:-4]
    with pytest.raises(ModelLoadError, match="raw_data size"):
        check_model(model)
