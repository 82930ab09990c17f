"""QAT as a pipeline stage: ``kind = "train"`` with ``stage = "qat"``, its keys, the shipped recipe."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from pipeline_helpers import setup
from train_helpers import needs_training

from onnxsq.errors import InvalidOptionError
from onnxsq.pipeline.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "sample_models" / "recipes"

QAT_RECIPE = """\
model = "model.onnx"

[data]
train = "train.npz"
val = "val.npz"

[[stage]]
kind = "train"
stage = "l2"
iters = 12
lr = 0.05

[[stage]]
kind = "train"
stage = "qat"
iters = 12
lr = 0.01
{extra}
"""


def test_shipped_qat_recipe_reads():
    recipe = load_recipe(RECIPES / "digits_qat.toml")
    names = [s.name for s in recipe.stages]
    assert names == ["l2", "l1", "threshold", "sparse", "qat"]
    qat = recipe.stage("qat")
    assert qat.kind == "train" and qat.options["quantization_start_iter"] == 40 and qat.options["bits"] == 8


@pytest.mark.parametrize("extra, line, message", [
    ("bitz = 4", 18, "unknown key 'bitz' for train stages (did you mean 'bits'?)"),
    ("quantization_start_iter = 0", 18, "quantization_start_iter must be at least 1"),
    ("weight_bits = 1", 18, "weight_bits must be an integer in 2..16"),
])
def test_bad_qat_keys_are_one_line_errors_naming_the_line(tmp_path, extra, line, message):
    paths = setup(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(QAT_RECIPE.format(extra=extra))
    with pytest.raises(InvalidOptionError) as err:
        load_recipe(recipe)
    text = str(err.value)
    assert text.startswith(f"{recipe}:{line}: ") and message in text and "\n" not in text
    assert paths["model"].exists()


def test_quantization_keys_in_a_float_stage_are_refused(tmp_path):
    setup(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(QAT_RECIPE.format(extra="").replace('stage = "l2"\n', 'stage = "l2"\nbits = 4\n'))
    expected = r"r.toml:10: stage 1 \(l2\): bits only applies to quantization-aware training"
    with pytest.raises(InvalidOptionError, match=expected):
        load_recipe(recipe)


@needs_training
def test_pipeline_runs_a_qat_stage_and_skips_it_when_unchanged(tmp_path):
    from onnxsq.pipeline import run_pipeline

    setup(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(QAT_RECIPE.format(extra="quantization_start_iter = 4\nweight_bits = 6"))
    first = run_pipeline(recipe, tmp_path / "work")
    rows = {r.stage: r for r in first.rows}
    assert rows["02-qat"].status == "ran"
    q = onnx.load(str(tmp_path / "work" / "02-qat.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert not any(n.op_type == "BatchNormalization" for n in q.graph.node)
    summary = json.loads((tmp_path / "work" / "02-qat.report.json").read_text())["summary"]
    assert summary["quantized_from_iter"] == 4 and summary["weight_bits"] == 6
    params = json.loads((tmp_path / "work" / "02-qat.params.json").read_text())  # the original's snapshot_log
    assert params
    again = run_pipeline(recipe, tmp_path / "work")
    assert [r.status for r in again.rows] == ["input", "cached", "cached"]
