"""simulate on models with the uint8 carrier (quantize --carrier uint8: signed activations at zero point
128): the program reads them as the signed integers they are, equals onnxruntime's fused run bit for bit,
and computes exactly what it computes for the same model carried natively (int8, zero point 0)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder

from onnxsq.errors import UnsupportedModelError
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program


def _net() -> onnx.ModelProto:
    """Conv-Relu → Conv (signed) → Add with the Relu output → MaxPool → Concat with a Conv → GAP → Gemm."""
    b = Builder(seed=7)
    r = b.node("Relu", [b.conv("x", 3, 8)])
    s = b.node("Add", [b.conv(r, 8, 8), r])
    p = b.node("MaxPool", [s], kernel_shape=[2, 2], strides=[2, 2])
    cat = b.node("Concat", [p, b.conv(p, 8, 4)], axis=1)
    g = b.node("Flatten", [b.node("GlobalAveragePool", [cat])])
    out = b.node("Gemm", [g, b.const("wf", b.weight((12, 5), 12)), b.const("bf", np.zeros(5))])
    return b.model({"x": [2, 3, 8, 8]}, [out])


def _feeds(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def carried():
    cfg = dict(report_samples=0)
    return {c: quantize(_net(), _feeds(6, 0), config=QuantizeConfig(carrier=c, **cfg))[0] for c in ("uint8", "native")}


def test_offset_tensors_read_as_signed(carried):
    u8, native = load_program(carried["uint8"]), load_program(carried["native"])
    # native only: a Conv reading a shared int8 tensor reads it quantized again (insert.requantize_for_layers)
    again = set(native.tensors) - set(u8.tensors)
    assert set(u8.tensors) <= set(native.tensors) and all("_shared_for_" in t for t in again)
    offset = [t for t, qt in u8.tensors.items() if qt.zero]
    assert offset and all(u8.tensors[t].zero == 128 and u8.tensors[t].signed for t in offset)
    for t, qt in native.tensors.items():
        if t in again:
            continue
        got = u8.tensors[t]
        assert (got.bits, got.signed, got.shift) == (qt.bits, qt.signed, qt.shift) and not qt.zero


def test_offset_model_equals_onnxruntime_and_the_native_simulation(carried, tmp_path):
    path = tmp_path / "u8.onnx"
    onnx.save(carried["uint8"], str(path))
    program = load_program(carried["uint8"])
    assert not program.islands
    sim, native = Simulator(program), Simulator(load_program(carried["native"]))
    session = ort_session(str(path), precise=True)
    for feed in _feeds(3, 5):
        got = sim.run(feed).outputs
        ref = dict(zip(program.outputs, session.run(None, feed)))
        same = native.run(feed).outputs
        for out in program.outputs:
            np.testing.assert_array_equal(got[out], ref[out])
            np.testing.assert_array_equal(got[out], same[out])


def test_another_zero_point_on_uint8_is_refused(carried):
    model = onnx.ModelProto()
    model.CopyFrom(carried["uint8"])
    inits = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear"
             and onnx.numpy_helper.to_array(inits[n.input[2]]) == 128)
    inits[q.input[2]].CopyFrom(onnx.numpy_helper.from_array(np.asarray(100, np.uint8), q.input[2]))
    with pytest.raises(UnsupportedModelError, match="zero point"):
        load_program(model)
