"""QuantizeConfig.pair_safe: weights that onnxruntime's x86 kernels without VNNI multiply in u8 x s8 pairs
(vpmaddubsw, which saturates each pair at int16) take 7 bits, so every session computes the model's exact
integers; depthwise and transposed convolutions keep 8. Auto (the default) does so only where this
onnxruntime's pairs saturate (onnxsq.calibration.pairs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder

from onnxsq.calibration.pairs import pairs_saturate
from onnxsq.params import params_from_model
from onnxsq.passes.quantize import QuantizeConfig, quantize

ort = pytest.importorskip("onnxruntime")
SHAPE = [1, 8, 8, 8]


def _net() -> onnx.ModelProto:
    """Conv → Relu → depthwise Conv → Relu → ConvTranspose → Conv → Gemm; large weights and inputs."""
    b = Builder(seed=2)
    c = b.node("Relu", [b.conv("x", 8, 16)])
    dw = b.node("Relu", [b.conv(c, 16, 16, group=16)])
    up = b.conv(dw, 16, 8, op="ConvTranspose")
    last = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Relu", [b.conv(up, 8, 16)])])])
    out = b.node("Gemm", [last, b.const("wf", b.weight((16, 5), 16)), b.const("bf", np.zeros(5))])
    return b.model({"x": SHAPE}, [out])


def _feeds(n: int = 6, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal(SHAPE) * 3).astype(np.float32)} for _ in range(n)]


def _weight_bits(q: onnx.ModelProto) -> dict[str, int]:
    return {n: p.bits for n, p in params_from_model(q).items() if p.kind == "weight"}


def test_paired_weights_take_seven_bits_depthwise_and_transposed_keep_eight():
    model = _net()
    layers = ("Conv", "ConvTranspose", "Gemm")
    conv, dw, convt, conv2, fc = (n.input[1] for n in model.graph.node if n.op_type in layers)
    bits = _weight_bits(quantize(model, _feeds(), config=QuantizeConfig(report_samples=0, pair_safe=True))[0])
    assert (bits[conv], bits[dw], bits[convt], bits[conv2], bits[fc]) == (7, 8, 8, 7, 7), bits
    off = _weight_bits(quantize(model, _feeds(), config=QuantizeConfig(report_samples=0, pair_safe=False))[0])
    assert set(off.values()) == {8}
    given = _weight_bits(quantize(model, _feeds(), config=QuantizeConfig(report_samples=0, pair_safe=True,
                                                                        weight_bits=8))[0])
    assert set(given.values()) == {8}  # --weight-bits is what the user asked for
    per_tensor = _weight_bits(quantize(model, _feeds(), config=QuantizeConfig(report_samples=0, pair_safe=True,
                                                                             per_channel=False))[0])
    assert set(per_tensor.values()) == {8}  # one shift per weight: 7 bits would cost more than the pairs


def _run(q: onnx.ModelProto, feed: dict, precise: bool) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if precise:  # exact u8u8 kernels on x86 (onnxsq.simulate.compare)
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_auto_follows_this_onnxruntime_and_says_so():
    q, rep = quantize(_net(), _feeds(), config=QuantizeConfig(report_samples=0))
    paired = 7 if pairs_saturate() else 8
    bits = _weight_bits(q)
    assert sorted(set(bits.values())) == sorted({paired, 8}), bits
    assert rep.summary["pair_safe"].startswith(f"{paired}-bit")
    # no line where pair_safe decides nothing, or was given
    for cfg in (QuantizeConfig(report_samples=0, per_channel=False), QuantizeConfig(report_samples=0, weight_bits=8),
                QuantizeConfig(report_samples=0, pair_safe=False)):
        assert "pair_safe" not in quantize(_net(), _feeds(), config=cfg)[1].summary


@pytest.mark.parametrize("carrier", ["native", "uint8"])
@pytest.mark.parametrize("pair_safe", [None, True])
def test_every_session_computes_the_exact_integers(carrier, pair_safe):
    q, _ = quantize(_net(), _feeds(), config=QuantizeConfig(report_samples=0, carrier=carrier, pair_safe=pair_safe))
    onnx.checker.check_model(q)
    for feed in _feeds(3, 5):
        np.testing.assert_array_equal(_run(q, feed, precise=False), _run(q, feed, precise=True))
