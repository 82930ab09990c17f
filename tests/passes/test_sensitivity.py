"""quantize's sensitivity: each unit's output SQNR equals that of the float model with only that unit's
tensors quantized by insert_qdq (an independent path), a mask of 0 is exactly float, and the fewest layers
kept float reach a target."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

import onnxruntime as ort
from builders import conv_classifier

from onnxsq.calibration import pow2
from onnxsq.graph import import_graph
from onnxsq.params import read_params
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.insert import insert_qdq
from onnxsq.passes.quantize.placement import plan_qdq
from onnxsq.passes.quantize.sensitivity import _fewest, measure, units_of

CONFIG = QuantizeConfig(equalize=False, bias_correction=False, report_samples=0, weight_bits=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = onnx.shape_inference.infer_shapes(conv_classifier((8, 16, 16), size=10, seed=3, bn=None, conv_bias=True))
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 1, 10, 10)).astype(np.float32)} for _ in range(6)]
    path = tmp_path_factory.mktemp("sens") / "p.json"
    quantize(model, calib, config=CONFIG, params_out=path)
    return model, calib, read_params(path)


def _run(model: onnx.ModelProto, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [s.run(None, f)[0] for f in feeds]


def _sqnr(ref, got) -> float:
    sig = sum(float(np.square(r.astype(np.float64)).sum()) for r in ref)
    noise = sum(float(np.square(r.astype(np.float64) - g).sum()) for r, g in zip(ref, got))
    return pow2.sqnr_db(sig, noise)


def test_each_unit_alone_equals_insert_qdq_of_that_unit(setup):
    model, calib, params = setup
    plan = plan_qdq(import_graph(model), per_channel=True)
    units = units_of(plan, params)
    assert {"conv0", "conv1", "conv2", "fc"} <= set(units), units
    assert units["conv1"] == ["conv1.weight", "r1"] or len(units["conv1"]) == 2, units
    result = measure(model, {}, plan, params, calib)
    ref = _run(model, calib)
    for unit, tensors in units.items():
        alone = _run(insert_qdq(model, {t: params[t] for t in tensors}), calib)
        assert result.alone[unit] == pytest.approx(_sqnr(ref, alone), abs=0.02), unit
    every = _run(insert_qdq(model, {t: params[t] for ts in units.values() for t in ts}), calib)
    assert result.full == pytest.approx(_sqnr(ref, every), abs=0.02)
    assert result.full < min(result.alone.values())  # all together cost more than any one alone


def test_a_target_keeps_the_fewest_most_sensitive_layers_float(setup):
    model, calib, params = setup
    plan = plan_qdq(import_graph(model), per_channel=True)
    base = measure(model, {}, plan, params, calib)
    target = base.full + 3.0
    result = measure(model, {}, plan, params, calib, target_sqnr=target)
    layers = {e.node for e in plan.layers}
    assert result.keep_float and set(result.keep_float) <= layers
    assert result.reached >= target
    ranked = sorted((u for u in base.alone if u in layers), key=base.alone.get)
    assert result.keep_float == ranked[:len(result.keep_float)]
    unchanged = measure(model, {}, plan, params, calib, target_sqnr=base.full - 1.0)
    assert unchanged.keep_float == [] and unchanged.reached == base.full


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("need", [0, 1, 3, 7, 100])
def test_fewest_finds_the_first_k_that_reaches(n, need):
    calls = []

    def f(k):
        calls.append(k)
        return float(k >= need)

    k, got = _fewest(f, n, 1.0)
    if need <= n:
        assert k == max(need, 1) if need > 0 else k == 1
        assert got == 1.0
    else:
        assert (k, got) == (n, 0.0)
    assert len(set(calls)) <= 2 * max(1, n).bit_length() + 1


def test_quantize_reports_sensitivity_per_layer(setup):
    model, calib, _ = setup
    _, report = quantize(model, calib, config=QuantizeConfig(sensitivity=True, report_samples=3))
    layers = {c.name: c.details for c in report.candidates if c.action == "quantized" and c.op != "tensor"}
    assert all("sensitivity_db" in d for d in layers.values()), layers
    assert report.summary["most_sensitive"] and report.summary["sensitivity_all_db"] <= min(
        d["sensitivity_db"] for d in layers.values())


def test_target_sqnr_keeps_layers_float_and_reaches_it(setup):
    model, calib, _ = setup
    cfg = QuantizeConfig(weight_bits=3, report_samples=3)
    _, base = quantize(model, calib, config=cfg)
    target = base.summary["output_sqnr_db"] + 4.0
    q, report = quantize(model, calib, config=QuantizeConfig(weight_bits=3, report_samples=3, target_sqnr=target))
    onnx.checker.check_model(q)
    kept = report.summary["kept_float_for_target"]
    assert kept and report.summary["target_reached"]
    assert report.summary["output_sqnr_db"] >= target - 0.3  # measured on the QDQ model itself
    skipped = {c.name for c in report.candidates if c.action == "skipped" and "--exclude" in c.reason}
    assert set(kept) <= skipped
    assert report.summary["stats_parts"] == 1  # quantized again from the first pass's statistics, not recalibrated


def test_target_sqnr_needs_report_samples():
    from onnxsq.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="report-samples"):
        QuantizeConfig(target_sqnr=30.0, report_samples=0).validate()
