"""16-bit layers (``--int16``, ``--target-sqnr --promote int16``): the matched layer's weight and output are
16-bit power-of-two QDQ (opset raised to 21 only then), the others stay 8-bit, the model runs in
onnxruntime and is closer to float than the all-8-bit one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from builders import conv_classifier, run
from onnx import numpy_helper

from onnxsq.calibration import pow2
from onnxsq.model_io import default_opset
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.placement_plan import Plan
from onnxsq.passes.quantize.wide import wide_tensors

BASE = dict(equalize=False, align_scales=False, report_samples=3, weight_bits=3)  # the weights as given


@pytest.fixture(scope="module")
def setup():
    model = onnx.shape_inference.infer_shapes(conv_classifier((8, 16), size=10, seed=3, bn=None, conv_bias=True))
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 1, 10, 10)).astype(np.float32)} for _ in range(6)]
    return model, calib


def _dq_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DequantizeLinear output name → its integer input (constants) and its scale."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.output[0]: (inits.get(n.input[0]), inits[n.input[1]], inits[n.input[2]])
            for n in model.graph.node if n.op_type == "DequantizeLinear"}


def _sqnr(ref: list, got: list) -> float:
    sig = sum(float(np.square(r.astype(np.float64)).sum()) for r in ref)
    noise = sum(float(np.square(r.astype(np.float64) - g).sum()) for r, g in zip(ref, got))
    return pow2.sqnr_db(sig, noise)


def test_int16_layer_is_16_bit_and_the_rest_stay_narrow(setup):
    model, calib = setup
    narrow, _ = quantize(model, calib, config=QuantizeConfig(**BASE))
    wide, report = quantize(model, calib, config=QuantizeConfig(**BASE, int16=("conv*",)))
    onnx.checker.check_model(wide)
    assert default_opset(narrow) == 13 and default_opset(wide) == 21
    assert report.summary["opset_raised"].startswith("13 -> 21")
    w16 = report.summary["int16_tensors"]
    assert {"conv0.weight", "conv1.weight"} <= set(w16) and len(w16) == 4, w16
    dq = _dq_inputs(wide)
    for name, (q, scale, zp) in dq.items():
        offset = zp.dtype == np.uint8 and np.all(zp == 128)  # a signed 8-bit tensor on the uint8 carrier
        assert (np.all(zp == 0) or offset) and np.all(np.exp2(np.round(np.log2(scale))) == scale), name
        if q is not None and name.startswith(("conv0.weight", "conv1.weight")):
            assert q.dtype == np.int16
            w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name[:-3]))
            shift = pow2.weight_shift(w, 16, axis=0, method="mse")
            np.testing.assert_array_equal(q, pow2.quantize(w, shift, 16, True, symmetric=True, axis=0,
                                                           dtype=np.int16))
        elif q is not None and q.dtype != np.int32:
            assert q.dtype == np.int8, name
    carriers = {n.output[0]: n for n in wide.graph.node if n.op_type == "QuantizeLinear"}
    assert any(n.input[0].startswith("r1") or "conv1" in n.input[0] for n in carriers.values())
    ref = [run(model, f)[0] for f in calib]
    assert _sqnr(ref, [run(wide, f)[0] for f in calib]) > _sqnr(ref, [run(narrow, f)[0] for f in calib]) + 0.5


def test_int16_pattern_that_matches_nothing_is_named(setup):
    model, calib = setup
    q, report = quantize(model, calib, config=QuantizeConfig(**BASE, int16=("nosuch*",)))
    assert any("--int16 'nosuch*' matches no node or tensor" in w for w in report.warnings), report.warnings
    assert "int16_tensors" not in report.summary and default_opset(q) == 13
    _, report = quantize(model, calib, config=QuantizeConfig(**BASE, int16=("relu*",)))  # a node, not a layer
    assert any("--int16 'relu*' matches no quantized layer" in w for w in report.warnings), report.warnings


def test_promote_without_target_warns(setup):
    model, calib = setup
    _, report = quantize(model, calib, config=QuantizeConfig(**BASE, promote="int16"))
    assert any("--promote int16: ignored" in w for w in report.warnings), report.warnings


def test_target_sqnr_promotes_to_16_bit(setup):
    model, calib = setup
    _, base = quantize(model, calib, config=QuantizeConfig(**BASE))
    target = base.summary["output_sqnr_db"] + 4.0
    q, report = quantize(model, calib, config=QuantizeConfig(**BASE, target_sqnr=target, promote="int16"))
    onnx.checker.check_model(q)
    picked = report.summary["int16_for_target"]
    assert picked and "kept_float_for_target" not in report.summary
    assert not any(c.action == "skipped" and "--exclude" in c.reason for c in report.candidates)
    assert report.summary["target_reached"] == (report.summary["output_sqnr_db"] >= target)
    assert report.summary["output_sqnr_db"] > base.summary["output_sqnr_db"] + 2.0


def test_a_wide_member_widens_its_shared_scale_group():
    plan = Plan(activations=["a", "b", "c"], groups={"a": "c", "b": "c", "c": "c"})
    wide, unmatched = wide_tensors(plan, ("a", "zz"))
    assert wide == {"a": 16, "b": 16, "c": 16} and unmatched == ["zz"]
    assert wide_tensors(plan, ()) == ({}, [])


def test_promote_must_be_a_known_choice():
    from onnxsq.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="--promote"):
        QuantizeConfig(promote="int4").validate()


def test_simulate_equals_onnxruntime_on_16_bit_layers(setup):
    from onnxsq.simulate.api import SimulateConfig, simulate
    from onnxsq.simulate.program import load_program

    model, calib = setup
    wide, _ = quantize(model, calib, config=QuantizeConfig(**BASE, int16=("conv1",)))
    program = load_program(wide)
    _, report = simulate(program, calib[:3], model=wide, config=SimulateConfig(per_layer=False))
    for out in program.outputs:
        assert report.summary[f"ort_equal_fraction:{out}"] == 1.0 and report.summary[f"ort_worst_step:{out}"] == 0
