"""quantize's calib_crops: seeded crops of the kept samples join calibration's statistics (merged exactly), and
the pass from them is kept only where it scores higher on the report samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from builders import build_gemm_model, conv_classifier, model_feeds, run

from onnxsq.errors import InvalidOptionError
from onnxsq.passes.quantize import QuantizeConfig, quantize


def _model_and_calib(n: int = 5):
    model = onnx.shape_inference.infer_shapes(conv_classifier((8, 8), in_ch=3, size=12, seed=3, bn=None))
    rng = np.random.default_rng(0)
    return model, [{"input": rng.random((1, 3, 12, 12), dtype=np.float32) * 2 - 0.5} for _ in range(n)]


def _scales(model: onnx.ModelProto) -> list[np.ndarray]:
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_the_crops_are_checked_and_the_kept_model_is_power_of_two():
    model, calib = _model_and_calib()
    q, r = quantize(model, calib, config=QuantizeConfig(report_samples=2, calib_crops=3, pair_safe=False))
    onnx.checker.check_model(q, full_check=True)
    assert r.summary["calib_crops"] == "6 crops of 2 samples"
    check = r.summary["calib_crops_check"]
    assert check["kept"] in ("samples", "crops") and check["samples_db"] is not None and check["crops_db"] is not None
    assert r.summary["calibration_samples"] == (11 if check["kept"] == "crops" else 5)
    for s in _scales(q):  # every scale an exact power of two
        m, _ = np.frexp(np.asarray(s, np.float64))
        assert np.all(m == 0.5)
    q0, r0 = quantize(model, calib, config=QuantizeConfig(report_samples=2, pair_safe=False))
    assert "calib_crops" not in r0.summary
    if check["kept"] == "samples":  # the first run is returned as it was
        np.testing.assert_array_equal(run(q, calib[-1])[0], run(q0, calib[-1])[0])


def test_the_merged_statistics_are_those_of_one_pass_over_samples_and_crops():
    from onnxsq.calibration.collect import collect_stats
    from onnxsq.data.crops import with_crops
    from onnxsq.passes.quantize import calib_crops, ptq

    model, calib = _model_and_calib(3)
    cfg = QuantizeConfig(report_samples=3, calib_crops=2).resolved()
    ctx, graph, meta, *_ = ptq.prepare(model, cfg)
    fm, fw = ptq.runnable(graph, meta)
    names = list(ctx.plan.activations)
    ctx.stats, kept, seen = collect_stats(fm, names, [(f, 1) for f in calib], histogram=True, keep=3, weights=fw)
    ctx.means = {}
    stats, note = calib_crops.crop_stats(ctx, fm, fw, kept, seen)
    whole, _, n = collect_stats(fm, names, [(f, 1) for f in with_crops(calib, 2, calib_crops.CALIB_CROP_SEED)],
                                histogram=True, weights=fw)
    assert note == "6 crops of 3 samples" and stats.samples == n == 9
    for t in names:
        a, b = stats.tensors[t], whole[t]
        assert (a.count, a.min, a.max, a.hist_exp) == (b.count, b.min, b.max, b.hist_exp)
        np.testing.assert_array_equal(a.hist_pos, b.hist_pos)
        np.testing.assert_array_equal(a.hist_neg, b.hist_neg)


@pytest.mark.parametrize(("lead", "kept"), [(0.1, "samples"), (0.5, "crops")])
def test_the_crops_need_a_margin(monkeypatch, lead, kept):
    from onnxsq.calibration.stats_file import CalibrationStats
    from onnxsq.passes.quantize import calib_crops, ptq
    from onnxsq.report import Report

    first = (object(), Report("quantize"))
    first[1].summary.update({"output_sqnr_db": 20.0, "calibration_samples": 9, "calibration_seconds": 1.0})
    second = (object(), Report("quantize"))
    second[1].summary.update({"output_sqnr_db": 20.0 + lead, "calibration_samples": 41})
    monkeypatch.setattr(ptq, "quantize", lambda *a, **k: second)
    stats = CalibrationStats("same", True, {}, {}, 41, units=1, covered=[(0, 1)])
    got = calib_crops.crops_checked(None, [{}], QuantizeConfig(), (None, None, None), first, (stats, "32 crops"))
    assert got[1].summary["calib_crops_check"]["kept"] == kept
    assert got[1].summary["calibration_samples"] == (41 if kept == "crops" else 9)
    assert got[1].summary["calib_crops"] == "32 crops"


def test_the_kept_models_parameters_file_is_written(tmp_path):
    model, calib = _model_and_calib()
    out = tmp_path / "q.params.json"
    _, r = quantize(model, calib, config=QuantizeConfig(report_samples=2, calib_crops=2, pair_safe=False),
                    params_out=out)
    assert out.exists() and r.summary["params_file"] == str(out)
    assert not list(tmp_path.glob("*.tmp"))  # the other run's file does not stay behind


def test_without_images_or_report_samples_a_warning_names_the_flag():
    model = build_gemm_model()
    calib = model_feeds(model)
    _, r = quantize(model, calib, config=QuantizeConfig(report_samples=2, calib_crops=2))
    assert "calib_crops" not in r.summary and any("--calib-crops 2 ignored" in w for w in r.warnings)
    model, calib = _model_and_calib()
    _, r = quantize(model, calib, config=QuantizeConfig(report_samples=0, calib_crops=2))
    assert any("--calib-crops 2 ignored: there is no report sample" in w for w in r.warnings)


def test_max_takes_four_crops_unless_told():
    assert QuantizeConfig(effort="max").resolved().calib_crops == 4
    assert QuantizeConfig(effort="max", calib_crops=0).resolved().calib_crops == 0
    assert QuantizeConfig().resolved().calib_crops is None
    with pytest.raises(InvalidOptionError, match="--calib-crops"):
        QuantizeConfig(calib_crops=-1).validate()
