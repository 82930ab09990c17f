"""simulate equals onnxruntime's optimized (fused integer) run of the same QDQ model, on the sample models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from simulate_helpers import SAMPLES, random_feeds

from onnxsq.errors import UnsupportedModelError
from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.program import load_program


def _steps(program, name, a, b):
    shift = program.tensors[program.dq[name]].shift if name in program.dq else 0
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) * 2.0**shift


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_models_equal_onnxruntime(quantized, name, per_channel):
    path = quantized(name, per_channel)
    model = onnx.load(str(path))
    program = load_program(model)
    sim = Simulator(program)
    session = ort_session(str(path), precise=True)  # exact u8u8 kernels (see onnxsq.simulate.compare)
    for feed in random_feeds(model, SAMPLES[name], 2, seed=5, batch=2):
        got = sim.run(feed).outputs
        ref = dict(zip(program.outputs, session.run(None, feed)))
        for out in program.outputs:
            steps = _steps(program, out, got[out], ref[out])
            if not program.islands:
                assert steps.max() == 0, f"{out}: {np.count_nonzero(steps)} elements differ"
            else:  # a float island may round differently by one step (onnxruntime 1.19 interpolates int8 itself)
                assert steps.max() <= 1


def test_non_power_of_two_scale_is_refused(quantized):
    model = onnx.load(str(quantized("digits_cnn")))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    init = next(i for i in model.graph.initializer if i.name == q.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(0.3, np.float32), init.name))
    with pytest.raises(UnsupportedModelError, match=q.output[0]):
        load_program(model)


def test_nonzero_zero_point_is_refused(quantized):
    model = onnx.load(str(quantized("digits_cnn")))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    init = next(i for i in model.graph.initializer if i.name == q.input[2])
    arr = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(3, arr.dtype), init.name))
    with pytest.raises(UnsupportedModelError, match="zero point"):
        load_program(model)
