"""quantize --effort: presets over the steps; an option given another value keeps it; max says what it skips."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from builders import conv_classifier

from onnxsq.errors import InvalidOptionError
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.config import EFFORTS
from onnxsq.runtime import has_training


def test_presets_apply_to_options_left_at_their_defaults():
    assert QuantizeConfig().resolved() == QuantizeConfig()
    fast = QuantizeConfig(effort="fast").resolved()
    assert (fast.method, fast.equalize) == ("minmax", False)
    assert QuantizeConfig(effort="fast", method="mse").resolved().method == "mse"
    assert QuantizeConfig(effort="max").resolved().weight_rounding == "gptq"
    assert QuantizeConfig(effort="max").resolved().ort_kernels is False  # measured: GPTQ gains more without them
    for name, preset in EFFORTS.items():
        cfg = QuantizeConfig(effort=name).resolved()
        assert all(getattr(cfg, k) == v for k, v in preset.items())
    with pytest.raises(InvalidOptionError, match="--effort"):
        QuantizeConfig(effort="extreme").resolved()


def test_max_rounds_the_weights_and_says_what_it_skipped():
    model = onnx.shape_inference.infer_shapes(conv_classifier((8,), size=8, seed=1, bn=None))
    rng = np.random.default_rng(0)
    calib = [{"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(4)]
    _, report = quantize(model, calib, config=QuantizeConfig(effort="max", pair_safe=True, pooled_headroom=0))
    # GPTQ ran and was checked on the whole model (here, at 7-bit weights, nearest rounding wins:
    # tests/passes/test_rounding.py)
    assert report.summary["effort"] == "max" and report.summary["weight_rounding_check"]["kept"] == "nearest"
    if has_training():  # the last step ran (tests/training/test_finetune.py)
        assert "finetune" in report.summary and "effort_skipped" not in report.summary
    else:
        assert "label-free fine-tuning" in report.summary["effort_skipped"][0]
    _, fast = quantize(model, calib, config=QuantizeConfig(effort="fast"))
    assert fast.summary["method"] == "minmax" and "equalized_pairs" not in fast.summary


def test_max_takes_nearest_rounding_and_no_crops_where_asked():
    cfg = QuantizeConfig(effort="max", weight_rounding="nearest", report_crops=0).resolved()
    assert (cfg.weight_rounding, cfg.report_crops, cfg.finetune) == ("nearest", 0, True)
    assert QuantizeConfig().resolved().weight_rounding is None  # nearest: nothing asks for GPTQ


def test_max_runs_without_the_alignment_check_where_asked():
    assert QuantizeConfig(effort="max", align_check=False).resolved().align_check is False
    assert QuantizeConfig(effort="max").resolved().align_check is True and not QuantizeConfig().resolved().align_check
