"""The pipeline runner: outputs per stage, skip on re-run, re-run on change, --force, --from, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from pipeline_helpers import setup, write_npz, write_recipe

from onnxsq import runtime
from onnxsq.errors import InvalidOptionError
from onnxsq.pipeline import charts, run_pipeline
from onnxsq.pipeline.runner import file_sha

pytest.importorskip("onnxruntime")


def statuses(result) -> list[str]:
    return [r.status for r in result.rows]


def mtimes(wd: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in wd.glob("*.onnx")}


@pytest.fixture
def project(tmp_path: Path, untouched) -> dict[str, Path]:
    files = setup(tmp_path)
    untouched(files["model"])  # the recipe's model is never written
    return {**files, "recipe": write_recipe(tmp_path), "wd": tmp_path / "work"}


def test_first_run_writes_every_stage_and_the_summary(project):
    wd = project["wd"]
    result = run_pipeline(project["recipe"], wd)
    assert statuses(result) == ["input", "ran", "ran", "ran"]
    assert [r.stage for r in result.rows] == ["00-input", "01-threshold", "02-optimize", "03-quantize"]
    for label in ("01-threshold", "02-optimize", "03-quantize"):
        onnx.checker.check_model(onnx.load(str(wd / f"{label}.onnx")))
        assert json.loads((wd / f"{label}.report.json").read_text())["pass_name"]
    assert (wd / "03-quantize.params.json").is_file()
    inp, thr, opt, qnt = result.rows
    assert all(r.metric_name == "accuracy" and 0.0 <= r.metric <= 1.0 for r in result.rows)
    assert inp.conv_sparsity == 0.0 and 0.4 < thr.conv_sparsity <= 0.5  # fraction_low 0.5 on the 4→32 conv
    assert opt.conv_sparsity == thr.conv_sparsity and opt.metric == pytest.approx(thr.metric)
    assert thr.int8_share == 0.0 and opt.int8_share == 0.0 and qnt.int8_share == 1.0
    assert qnt.size_bytes == (wd / "03-quantize.onnx").stat().st_size
    state = json.loads((wd / "state.json").read_text())
    assert state["stages"]["03-quantize"]["status"] == "done"
    assert state["stages"]["03-quantize"]["output_sha"] == file_sha(wd / "03-quantize.onnx")
    summary = json.loads((wd / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == [r.stage for r in result.rows]
    assert "| 01-threshold | ran" in (wd / "summary.md").read_text()
    report = result.report().to_dict()
    assert [c["action"] for c in report["candidates"]] == statuses(result)


def test_rerun_skips_and_changes_rerun_what_they_touch(project):
    wd, recipe, tmp = project["wd"], project["recipe"], project["recipe"].parent
    first = run_pipeline(recipe, wd)
    before = mtimes(wd)
    again = run_pipeline(recipe, wd)
    assert statuses(again) == ["input", "cached", "cached", "cached"]
    assert mtimes(wd) == before  # nothing rewritten
    assert [r.metric for r in again.rows] == [r.metric for r in first.rows]  # cached evaluations

    write_recipe(tmp, bits=6)  # a quantize option: only quantize re-runs
    assert statuses(run_pipeline(recipe, wd)) == ["input", "cached", "cached", "ran"]

    write_recipe(tmp, fraction=0.3, bits=6)  # a threshold option: it and everything after
    assert statuses(run_pipeline(recipe, wd)) == ["input", "ran", "ran", "ran"]

    write_npz(project["train"], 65, seed=9)  # the calibration data (the training set by default)
    assert statuses(run_pipeline(recipe, wd)) == ["input", "cached", "cached", "ran"]

    assert statuses(run_pipeline(recipe, wd, force=True)) == ["input", "ran", "ran", "ran"]


def test_from_keeps_earlier_stages_and_reruns_the_rest(project):
    wd, recipe = project["wd"], project["recipe"]
    run_pipeline(recipe, wd)
    kept = (wd / "01-threshold.onnx").stat().st_mtime_ns
    result = run_pipeline(recipe, wd, from_stage="optimize")
    assert statuses(result) == ["input", "kept", "ran", "ran"]
    assert (wd / "01-threshold.onnx").stat().st_mtime_ns == kept
    write_recipe(recipe.parent, fraction=0.3)  # an earlier stage changed: --from keeps it, and says so
    result = run_pipeline(recipe, wd, from_stage="02-optimize")
    assert statuses(result) == ["input", "kept", "ran", "ran"]
    assert any("01-threshold" in w and "--from keeps the old output" in w for w in result.warnings)


def test_from_needs_the_earlier_outputs(project):
    with pytest.raises(InvalidOptionError, match="01-threshold has no output"):
        run_pipeline(project["recipe"], project["wd"], from_stage="3")
    with pytest.raises(InvalidOptionError, match="no stage 'qat'"):
        run_pipeline(project["recipe"], project["wd"], from_stage="qat")


def test_tampered_output_and_interrupted_stage_rerun(project):
    wd, recipe = project["wd"], project["recipe"]
    run_pipeline(recipe, wd)
    good = (wd / "02-optimize.onnx").read_bytes()
    (wd / "02-optimize.onnx").write_bytes((wd / "01-threshold.onnx").read_bytes())
    result = run_pipeline(recipe, wd)
    # optimize is deterministic: the same output again, so quantize's input is unchanged
    assert statuses(result) == ["input", "cached", "ran", "cached"]
    assert (wd / "02-optimize.onnx").read_bytes() == good
    state = json.loads((wd / "state.json").read_text())
    state["stages"]["03-quantize"]["status"] = "running"  # as if killed while quantizing
    (wd / "state.json").write_text(json.dumps(state))
    result = run_pipeline(recipe, wd)
    assert statuses(result) == ["input", "cached", "cached", "ran"]
    assert "03-quantize was interrupted; running it again from the start (only training stages checkpoint)" \
        in result.warnings
    state = json.loads((wd / "state.json").read_text())
    assert len(state["evals"]) == 4  # one per model of this run; older evaluations are dropped
    (wd / "state.json").write_text("{not json")
    result = run_pipeline(recipe, wd)
    assert statuses(result) == ["input", "ran", "ran", "ran"]
    assert any("state.json: unreadable" in w for w in result.warnings)


def test_charts_or_a_warning_naming_why(project, monkeypatch):
    wd = project["wd"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_mpl = False
    else:
        has_mpl = True
    if has_mpl:
        result = run_pipeline(project["recipe"], wd)
        for name in ("sparsity.png", "metric.png"):
            assert (wd / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert result.files[Path(name).stem] == wd / name

    def missing():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(charts, "_pyplot", missing)
    result = run_pipeline(project["recipe"], wd)
    assert any(w.startswith("charts skipped: matplotlib is not installed") for w in result.warnings)


def test_workdir_that_is_a_file(project):
    project["wd"].write_text("")
    with pytest.raises(InvalidOptionError, match="is a file"):
        run_pipeline(project["recipe"], project["wd"])


TRAIN_RECIPE = """\
model = "model.onnx"
[data]
train = "train.npz"
val = "val.npz"
[[stage]]
kind = "train"
stage = "l2"
iters = 24
batch_size = 8
lr = 0.05
checkpoint_every = 5
"""


@pytest.mark.skipif(not runtime.has_training(), reason="needs onnxruntime-training (the .venv environment)")
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    setup(tmp_path)
    recipe = write_recipe(tmp_path, TRAIN_RECIPE)
    wd = tmp_path / "work"

    def stop(label, info):
        if info["iteration"] == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, wd, on_step=stop)
    assert (wd / "01-l2.ckpt.npz").is_file()
    assert json.loads((wd / "state.json").read_text())["stages"]["01-l2"]["status"] == "running"
    seen: list[int] = []
    result = run_pipeline(recipe, wd, on_step=lambda label, info: seen.append(info["iteration"]))
    assert statuses(result) == ["input", "resumed"]
    assert seen[0] == 11 and seen[-1] == 24  # from the checkpoint at iteration 10
    report = json.loads((wd / "01-l2.report.json").read_text())
    assert report["summary"]["resumed_from"] == 10 and report["summary"]["iterations"] == 24
    assert not (wd / "01-l2.ckpt.npz").exists()
    assert statuses(run_pipeline(recipe, wd)) == ["input", "cached"]
    trained = onnx.load(str(wd / "01-l2.onnx"))
    assert not np.array_equal(onnx.numpy_helper.to_array(trained.graph.initializer[0]),
                              onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "model.onnx")).graph.initializer[0]))


def test_on_progress_reports_each_stage_while_it_runs(project):
    seen: list[tuple[str, str, int, int | None]] = []
    run_pipeline(project["recipe"], project["wd"],
                 on_progress=lambda label, phase, done, total, info: seen.append((label, phase, done, total)))
    labels = list(dict.fromkeys(label for label, *_ in seen))
    assert labels == ["00-input", "01-threshold", "02-optimize", "03-quantize"]
    phases = {label: {p for lab, p, *_ in seen if lab == label} for label in labels}
    assert phases["01-threshold"] == {"running", "eval"} and {"calibrate", "evaluate"} <= phases["03-quantize"]
    calib = [(d, t) for lab, p, d, t in seen if lab == "03-quantize" and p == "calibrate"]
    assert calib[-1] == (16, 16) and all(d <= t for d, t in calib)  # calib_count = 16
    assert ("03-quantize", "running", 0, None) == next(s for s in seen if s[0] == "03-quantize")
    seen.clear()  # a re-run has nothing to run: no stage reports "running"
    run_pipeline(project["recipe"], project["wd"], on_progress=lambda *a: seen.append(a))
    assert not any(a[1] == "running" for a in seen)


def test_stage_models_carry_the_recipes_image_preprocessing(tmp_path):
    """With image data and a [data] preprocess table, every stage's model stores it (onnxsq eval reads it)."""
    from onnx import TensorProto, helper
    from PIL import Image

    from onnxsq.data.stored import stored

    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"], name="gap"),
                           helper.make_node("Flatten", ["p"], ["y"], name="flat")], "cm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(tmp_path / "m.onnx"))
    for k in range(3):
        (tmp_path / "val" / f"c{k}").mkdir(parents=True)
        px = np.full((4, 4, 3), 100, np.uint8)
        px[:, :, k] = 200
        Image.fromarray(px).save(tmp_path / "val" / f"c{k}" / "0.png")
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "m.onnx"\n[data]\nval = "val"\ntrain = "val"\n'
                      'mean = [10.0, 20.0, 30.0]\nstd = [2.0, 2.0, 2.0]\n'
                      '[[stage]]\nkind = "optimize"\n')
    result = run_pipeline(recipe, tmp_path / "wd")
    assert statuses(result) == ["input", "ran"]
    meta = stored(onnx.load(str(tmp_path / "wd" / "01-optimize.onnx")))
    assert meta is not None and meta["mean"] == (10.0, 20.0, 30.0) and meta["std"] == (2.0, 2.0, 2.0)
    assert "01-optimize" in meta["by"]
    assert stored(onnx.load(str(tmp_path / "m.onnx"))) is None  # the input model is not written


def test_a_crop_the_static_input_cannot_take_is_one_error_before_training(tmp_path):
    setup(tmp_path)
    recipe = write_recipe(tmp_path, TRAIN_RECIPE.replace('val = "val.npz"\n', 'val = "val.npz"\ncrop = [4, 4]\n'))
    fits = r"\[data\] crop = \[4, 4\] does not fit .* use \[data\] crop = \[6, 6\]"
    with pytest.raises(InvalidOptionError, match=fits):
        run_pipeline(recipe, tmp_path / "work")
    assert not (tmp_path / "work" / "01-l2.onnx").exists()
