"""Where onnxruntime-training does not import (the mainline environment), --effort max says in one line that
it skipped label-free fine-tuning, and an explicit --finetune warns by name; the model is the pass's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from builders import conv_classifier

from onnxsq import runtime
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.training import finetune


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(finetune, "has_training", lambda: False)
    monkeypatch.setattr(runtime, "has_training", lambda: False)  # the report's effort_skipped asks it too


def _calib():
    rng = np.random.default_rng(0)
    return [{"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(4)]


def test_max_says_in_one_line_that_it_skipped_fine_tuning(no_training):
    model = conv_classifier((8,), size=8, seed=1, bn=None)
    _, report = quantize(model, _calib(), config=QuantizeConfig(effort="max"))
    (line,) = report.summary["effort_skipped"]
    assert line.startswith("label-free fine-tuning") and "onnxruntime-training" in line
    assert "finetune" not in report.summary and not any("--finetune" in w for w in report.warnings)


def test_an_explicit_finetune_warns_by_name(no_training):
    model = conv_classifier((8,), size=8, seed=1, bn=None)
    q, report = quantize(model, _calib(), config=QuantizeConfig(finetune=True))
    plain, _ = quantize(model, _calib(), config=QuantizeConfig())
    assert any(w.startswith("--finetune: label-free fine-tuning needs onnxruntime-training") for w in report.warnings)
    assert q.SerializeToString() == plain.SerializeToString()


def test_the_cli_prints_the_skipped_line(no_training, run_cli, tmp_path):
    import onnx

    model = tmp_path / "m.onnx"
    onnx.save(conv_classifier((8,), size=8, seed=1, bn=None), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32))
    result = run_cli("quantize", model, "--calib", calib, "-o", tmp_path / "q.onnx", "--effort", "max")
    assert result.code == 0, result.err
    text = " ".join((result.out + result.err).split())
    assert "label-free fine-tuning" in text and "onnxruntime-training" in text  # a list cell is not rich markup
