"""quantize's QDQ insertion on its own (onnxsq.passes.quantize.insert): integer weights written once,
power-of-two scales with zero zero points, fewer bits than the carrier through a Clip."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build_conv_model
from onnx import numpy_helper

from onnxsq.calibration import pow2
from onnxsq.params import TensorQuant
from onnxsq.passes.quantize.insert import insert_qdq

PARAMS = {
    "input": TensorQuant("input", "activation", 8, True, 5),
    "conv.weight": TensorQuant("conv.weight", "weight", 8, True, 6),
    "output": TensorQuant("output", "activation", 4, False, 3),
}


def test_weights_become_integers_and_activations_get_a_pair():
    model = build_conv_model(bn=False)
    q = insert_qdq(model, PARAMS)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv.weight"))
    np.testing.assert_array_equal(inits["conv.weight_quantized"], pow2.quantize(w, 6, 8, True, symmetric=True))
    assert inits["conv.weight_quantized"].dtype == np.int8 and "conv.weight" not in inits
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 3
    assert ops.count("Clip") == 1  # the 4-bit output: clipped to [0, 15] steps before its 8-bit carrier
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale, zp = inits[n.input[1]], inits[n.input[2]]
            assert pow2.is_power_of_two(scale) and not np.any(zp)
    assert len(model.graph.node) == 2  # the input model is not changed


def test_the_result_runs_and_stays_within_its_steps():
    ort = pytest.importorskip("onnxruntime")
    model = build_conv_model(bn=False)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None,
                                                                                                  {"input": x})[0]

    y, yq = run(model), run(insert_qdq(model, PARAMS))
    assert np.all(yq >= 0) and np.all(yq <= 15 * 2.0**-3)  # unsigned 4 bits at shift 3
    inside = y <= 15 * 2.0**-3
    assert np.max(np.abs(y - yq)[inside]) < 0.25  # weight and input rounding on top of the half-step (0.0625)
