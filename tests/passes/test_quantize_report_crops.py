"""quantize's report_crops: seeded crops of the report samples join them for GPTQ, the whole-model checks
and the report; the pass run again on them (the alignment check) makes no crops of crops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from builders import build_gemm_model, conv_classifier, model_feeds, run

from onnxsq.errors import InvalidOptionError
from onnxsq.passes.quantize import QuantizeConfig, quantize


def _model_and_calib(n: int = 6):
    model = onnx.shape_inference.infer_shapes(conv_classifier((8, 8), in_ch=3, size=12, seed=3, bn=None))
    rng = np.random.default_rng(0)
    return model, [{"input": rng.random((1, 3, 12, 12), dtype=np.float32) * 2 - 0.5} for _ in range(n)]


def test_the_report_judges_on_the_samples_and_their_crops():
    model, calib = _model_and_calib()
    q0, r0 = quantize(model, calib, config=QuantizeConfig(report_samples=2, pair_safe=False))
    q, r = quantize(model, calib, config=QuantizeConfig(report_samples=2, report_crops=3, pair_safe=False))
    assert r.summary["report_crops"] == "6 crops of the 2 report samples" and r.summary["report_samples"] == 8
    assert r0.summary["report_samples"] == 2 and "report_crops" not in r0.summary
    onnx.checker.check_model(q, full_check=True)
    # the crops only judge: without a whole-model choice to make, the model is the same
    feed = calib[-1]
    np.testing.assert_array_equal(run(q, feed)[0], run(q0, feed)[0])


def test_the_alignment_check_runs_again_on_the_same_samples():
    model, calib = _model_and_calib()
    q, r = quantize(model, calib, config=QuantizeConfig(report_samples=2, report_crops=2, align_check=True,
                                                        pair_safe=False))
    onnx.checker.check_model(q, full_check=True)
    assert r.summary["report_samples"] == 6  # the kept model's report: crops once, not crops of crops
    check = r.summary.get("scale_alignment_check")
    if check is not None:  # something aligned: both figures measured on those six samples
        assert check["aligned_db"] is not None and check["unaligned_db"] is not None


def test_max_judges_on_eight_samples_and_two_crops_of_each():
    cfg = QuantizeConfig(effort="max").resolved()
    assert (cfg.report_samples, cfg.report_crops) == (8, 2)
    assert QuantizeConfig(effort="max", report_crops=0).resolved().report_crops == 0  # given: kept
    with pytest.raises(InvalidOptionError, match="--report-crops"):
        QuantizeConfig(report_crops=-1).validate()


def test_inputs_that_are_no_images_get_no_crops_and_a_warning():
    model = build_gemm_model()
    calib = model_feeds(model)
    _, r = quantize(model, calib, config=QuantizeConfig(report_samples=2, report_crops=2))
    assert "report_crops" not in r.summary and r.summary["report_samples"] == 2
    assert any("--report-crops 2 ignored" in w for w in r.warnings)


def test_the_output_figure_of_several_outputs_is_their_mean():
    from onnxsq.passes.quantize.report import output_db

    assert output_db({"output_sqnr_db": 12.5}) == 12.5
    assert output_db({"output_sqnr_db (a)": 10.0, "output_sqnr_db (b)": 20.0, "top1_agreement (a)": 1.0}) == 15.0
    assert output_db({"output_sqnr_db (a)": float("inf"), "output_sqnr_db (b)": 20.0}) == 20.0
    assert output_db({"report_samples": 0}) is None


@pytest.mark.parametrize(("lead", "kept"), [(0.1, "aligned"), (0.5, "unaligned")])
def test_the_alignment_check_needs_a_margin_to_drop_the_alignment(monkeypatch, lead, kept):
    from onnxsq.passes.quantize import align, ptq
    from onnxsq.report import Report

    first = (object(), Report("quantize"))
    first[1].summary.update({"output_sqnr_db (a)": 20.0, "output_sqnr_db (b)": 30.0, "scale_alignment": {}})
    second = (object(), Report("quantize"))
    second[1].summary["output_sqnr_db (a)"], second[1].summary["output_sqnr_db (b)"] = 20.0 + lead, 30.0 + lead
    monkeypatch.setattr(ptq, "quantize", lambda *a, **k: second)
    got = align.checked(None, [{}], QuantizeConfig(), (None, None, None), first, stats=object())
    assert got[1].summary["scale_alignment_check"]["kept"] == kept
    assert got[1].summary["scale_alignment_check"]["aligned_db"] == 25.0
