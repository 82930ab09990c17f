"""onnxsq.proto_stream: piecewise reading and writing give the same model as protobuf's own."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxsq import model_io, proto_stream
from onnxsq.errors import ModelLoadError
from onnxsq.model_io import load_model, save_model


def _rich_model(conv_model) -> onnx.ModelProto:
    """A model using many ModelProto/GraphProto fields, including ones after ``graph`` in field order."""
    m = conv_model(cin=4, cout=8)
    m.doc_string = "doc"
    m.producer_name = "tests"
    m.model_version = 3
    helper.set_model_props(m, {"a": "1", "b": "2"})
    m.graph.doc_string = "graph doc"
    m.graph.value_info.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
    big = np.random.default_rng(0).standard_normal((300, 7)).astype(np.float32)
    m.graph.initializer.append(numpy_helper.from_array(big, "unused_big"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "small_int"))
    return m


def test_write_then_parse_gives_an_equal_model(conv_model):
    m = _rich_model(conv_model)
    buf = io.BytesIO()
    n = proto_stream.write_model(m, buf)
    assert n == len(buf.getvalue()) == m.ByteSize()
    back = onnx.ModelProto()
    back.ParseFromString(buf.getvalue())
    assert back == m


def test_read_model_equals_protobuf_parse(conv_model):
    m = _rich_model(conv_model)
    data = m.SerializeToString()
    assert proto_stream.read_model(io.BytesIO(data), len(data)) == m


def test_small_chunks_still_parse_the_same(conv_model, monkeypatch):
    monkeypatch.setattr(proto_stream, "CHUNK", 1)  # a merge after every field
    m = _rich_model(conv_model)
    data = m.SerializeToString()
    assert proto_stream.read_model(io.BytesIO(data), len(data)) == m


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**31 - 1, 2**40])
def test_varint_round_trip(n):
    raw = proto_stream.varint(n)
    value, got = proto_stream._read_varint(io.BytesIO(raw + b"tail"))
    assert (value, got) == (n, raw)


def test_save_model_writes_a_file_onnxruntime_and_onnx_read(tmp_path, conv_model):
    m = _rich_model(conv_model)
    path = save_model(m, tmp_path / "m.onnx")
    assert onnx.load(str(path)) == m
    ort = pytest.importorskip("onnxruntime")
    x = np.ones((1, 4, 8, 8), np.float32)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def test_load_model_streams_large_files(tmp_path, conv_model, monkeypatch):
    m = _rich_model(conv_model)
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    monkeypatch.setattr(model_io, "STREAM_READ_BYTES", 0)
    assert load_model(path) == m


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_streamed_truncation_is_a_model_load_error(cut, tmp_path, conv_model, monkeypatch):
    monkeypatch.setattr(model_io, "STREAM_READ_BYTES", 0)
    good = _rich_model(conv_model).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good[: max(1, int(len(good) * cut))])
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_corrupt_huge_length_is_an_error_not_an_allocation(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "STREAM_READ_BYTES", 0)
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(proto_stream.varint((7 << 3) | 2) + proto_stream.varint(2**60) + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="runs past the end"):
        load_model(path)
