"""Label-free fine-tuning (quantize --finetune, the last step of --effort max): a valid power-of-two QDQ model,
zeros kept, the held-out rule, the student equal to the pass's model, the teacher loss against numpy."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnxruntime.training")

from builders import conv_classifier

from onnxsq.calibration import pow2
from onnxsq.graph import data_inputs
from onnxsq.params import read_params
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.runtime import make_session
from onnxsq.training import finetune as ft
from onnxsq.training.finetune_graph import teacher_loss_numpy
from onnxsq.training.finetune_loop import StudentRun

CFG = dict(finetune=True, finetune_iters=40, finetune_crops=4, report_samples=2)


def _sparse_model() -> onnx.ModelProto:
    """A two-block classifier whose first conv weight is half zeros (exact)."""
    model = conv_classifier((8, 8), classes=6, in_ch=3, size=12, seed=3, bn="random", conv_bias=True)
    w = next(i for i in model.graph.initializer if i.name == "conv0.weight")
    arr = numpy_helper.to_array(w).copy()
    arr[np.abs(arr) < np.median(np.abs(arr))] = 0.0
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    return model


def _calib(n: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.uniform(0, 1, (1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def _dq_nodes(model: onnx.ModelProto):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            yield node, inits


def test_finetuned_model_is_a_power_of_two_qdq_model_with_the_zeros_kept():
    model = _sparse_model()  # any held-out result is kept here: the kept path's model and report are checked
    q, report = quantize(model, _calib(), config=QuantizeConfig(**CFG, finetune_min_gain=-1e3))
    onnx.checker.check_model(q)
    make_session(q).run(None, _calib(1, seed=9)[0])
    for node, inits in _dq_nodes(q):
        scale = inits[node.input[1]]
        assert np.all(np.ldexp(1.0, -pow2.shift_of(scale)) == scale), node.name  # exact powers of two
        if len(node.input) > 2:
            assert not np.any(inits[node.input[2]]), node.name
    zeros = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "conv0.weight")) == 0
    ints = numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == "conv0.weight_quantized"))
    assert zeros.any() and not np.any(ints[zeros])
    info = report.summary["finetune"]
    assert info["iterations"] == 40 and info["held_out_samples"] > 0 and "finetune_gain_db" in report.summary
    assert "effort_skipped" not in report.summary
    assert info["kept"]  # the report's output SQNR is against the float model (not the trained float weights)
    want = ft.output_fidelity(model, q, _calib()[:2])["output_sqnr_db"]
    assert report.summary["output_sqnr_db"] == pytest.approx(want, abs=0.05)
    assert report.summary["finetune_gain_db"] == pytest.approx(
        info["held_out_sqnr_db_after"] - info["held_out_sqnr_db_before"], abs=0.02)


def test_a_worse_result_on_the_held_out_samples_keeps_the_post_training_model(monkeypatch):
    model, calib = _sparse_model(), _calib()
    # the student starts from the pass without scale alignment (it writes a parameters file) on the float model
    # with the alignment carried by its weights (finetune_ptq.student_start); the model kept is the better on
    # the held-out samples of that one and the pass with alignment
    from onnxsq.training.finetune_ptq import student_start

    unaligned_cfg = QuantizeConfig(**{**CFG, "finetune": False, "align_scales": False})
    start = student_start(model, calib, QuantizeConfig(**{**CFG, "finetune": False}).resolved(), None, None)
    plain, _ = quantize(start, calib, config=unaligned_cfg)
    aligned, _ = quantize(model, calib, config=QuantizeConfig(**{**CFG, "finetune": False}))

    def ruined(model, plan, tparams, xs, targets, masks, cfg, feats=()):
        values = ft.initializers(model)
        return {k: (-v if v.ndim >= 2 else v) for k, v in values.items()}, [1.0]

    monkeypatch.setattr(ft, "train_student", ruined)
    q, report = quantize(model, calib, config=QuantizeConfig(**CFG))
    info = report.summary["finetune"]
    assert not info["kept"] and report.summary["finetune_gain_db"] == 0.0
    assert info["held_out_sqnr_db_after"] < info["held_out_sqnr_db_before"]
    assert any("kept the post-training model" in w for w in report.warnings)
    post = {"unaligned": plain, "aligned": aligned}[info["post_training"]]
    if "held_out_sqnr_db_aligned" in info:
        assert info["held_out_sqnr_db_before"] == max(info["held_out_sqnr_db_aligned"],
                                                      info["held_out_sqnr_db_unaligned"])
    x = _calib(1, seed=5)[0]
    np.testing.assert_array_equal(make_session(q).run(None, x)[0], make_session(post).run(None, x)[0])


def test_the_aligned_pass_is_kept_where_it_scores_higher_on_the_held_out_samples(monkeypatch):
    """The held-out measures in call order: the unaligned pass, the aligned pass, the fine-tuned model."""
    model, calib = _sparse_model(), _calib()
    aligned, arep = quantize(model, calib, config=QuantizeConfig(**{**CFG, "finetune": False}))
    assert arep.summary["scales_aligned"] > 0  # the setting this test needs
    scores = iter([(10.0, 10.0), (20.0, 20.0), (15.0, 15.0)])
    monkeypatch.setattr(ft, "held_out_sqnr", lambda ref, got: next(scores))
    q, report = quantize(model, calib, config=QuantizeConfig(**CFG))
    info = report.summary["finetune"]
    assert info["post_training"] == "aligned" and not info["kept"] and info["held_out_sqnr_db_before"] == 20.0
    assert report.summary["scales_aligned"] == arep.summary["scales_aligned"] and "effort_skipped" not in report.summary
    assert any("aligned; needs" in w for w in report.warnings)
    x = _calib(1, seed=5)[0]
    np.testing.assert_array_equal(make_session(q).run(None, x)[0], make_session(aligned).run(None, x)[0])


@pytest.mark.parametrize("refit", [True, False])
def test_a_kept_recipe_is_trained_again_on_every_sample(monkeypatch, refit):
    calls = []

    def unchanged(model, plan, tparams, xs, targets, masks, cfg, feats=()):
        calls.append((len(xs), len(targets)))
        return ft.initializers(model), [1.0]

    monkeypatch.setattr(ft, "train_student", unchanged)
    cfg = QuantizeConfig(**CFG, finetune_min_gain=-1e3, finetune_refit=refit)
    q, report = quantize(_sparse_model(), _calib(), config=cfg)
    onnx.checker.check_model(q)
    info = report.summary["finetune"]
    assert calls[0] == (info["train_samples"],) * 2 and info["kept"]
    if refit:  # the held-out samples' crops join the training ones, each with its teacher output
        every = info["train_samples"] + info["held_out_samples"]
        assert calls[1:] == [(every, every)] and info["refit"]["samples"] == every
    else:
        assert len(calls) == 1 and "refit" not in info


def test_a_refused_recipe_is_not_trained_again(monkeypatch):
    calls = []

    def ruined(model, plan, tparams, xs, targets, masks, cfg, feats=()):
        calls.append(len(xs))
        return {k: (-v if v.ndim >= 2 else v) for k, v in ft.initializers(model).items()}, [1.0]

    monkeypatch.setattr(ft, "train_student", ruined)
    _, report = quantize(_sparse_model(), _calib(), config=QuantizeConfig(**CFG))
    assert len(calls) == 1 and "refit" not in report.summary["finetune"]


def _student(model: onnx.ModelProto, calib: list[dict]):
    cfg = QuantizeConfig(**{**CFG, "finetune": False}).resolved()
    with tempfile.TemporaryDirectory() as tmp:
        q, _ = quantize(model, calib, config=cfg, params_out=Path(tmp) / "p.json")
        tparams = read_params(Path(tmp) / "p.json")
    float_model, plan = ft._base(model, cfg, None)
    weights = ft.initializers(float_model)
    start = ft.with_initializers(float_model, ft.start_weights(weights, tparams, ft.ptq_integers(q, weights)))
    targets = ft._run(float_model, calib)
    return q, StudentRun(start, plan, tparams, calib, targets, cfg), targets


def test_the_student_computes_what_the_quantized_model_computes():
    calib = _calib()
    q, run, _ = _student(_sparse_model(), calib)
    student, qdq = make_session(run.graph.model), make_session(q)
    for x in calib:
        np.testing.assert_array_equal(student.run(None, x)[0], qdq.run(None, x)[0])


def test_the_teacher_loss_is_the_normalized_squared_error_numpy_computes():
    calib = _calib()
    q, run, targets = _student(_sparse_model(), calib)
    with tempfile.TemporaryDirectory() as tmp:
        run._open(Path(tmp))
        student = make_session(run.graph.model)
        name = data_inputs(run.graph.model)[0].name
        for x, t in zip(calib[:3], targets):
            loss = float(np.asarray(run.module(x[name], *t)).reshape(-1)[0])
            run.module.lazy_reset_grad()
            want = teacher_loss_numpy(student.run(None, x), t, run.weights)
            assert loss == pytest.approx(want, rel=1e-4, abs=1e-9)
    power = np.mean([np.mean(np.square(t[0], dtype=np.float64)) for t in targets])
    assert run.weights[0] == pytest.approx(1 / np.sqrt(power), rel=1e-6)


def test_the_held_out_split():
    assert ft.split(list(range(9)), 3) == ([0, 2, 3, 5, 6, 8], [1, 4, 7])
    train, held = ft.split(list(range(2)), 3)
    assert (train, held) == ([1], [0])
    assert ft.split([0], 3) == ([0], [])


def test_the_held_out_measures_are_the_mean_per_sample_and_the_pooled_sqnr():
    rng = np.random.default_rng(0)
    ref = [[rng.normal(0, 1, (1, 6)), rng.normal(0, 2, (1, 3))] for _ in range(3)]
    noise = (0.1, 0.01, 1.0)  # the third sample's noise dominates the pooled figure
    got = [[r + rng.normal(0, n, r.shape) for r in rs] for rs, n in zip(ref, noise)]

    def db(signal, err):
        return 10 * np.log10(signal / err)

    each = [db(sum(np.sum(r**2) for r in rs), sum(np.sum((r - g) ** 2) for r, g in zip(rs, gs)))
            for rs, gs in zip(ref, got)]
    pooled = db(sum(np.sum(r**2) for rs in ref for r in rs),
                sum(np.sum((r - g) ** 2) for rs, gs in zip(ref, got) for r, g in zip(rs, gs)))
    mean, pool = ft.held_out_sqnr(ref, got)
    assert mean == pytest.approx(np.mean(each), abs=1e-9) and pool == pytest.approx(pooled, abs=1e-9)
    assert mean > pool + 10  # two good samples of three: the mean says so, the pooled figure does not
    assert ft.held_out_sqnr(ref, ref) == (300.0, float("inf"))  # exact samples are bounded, not inf


def test_too_few_samples_is_said_not_skipped_silently():
    q, report = quantize(_sparse_model(), _calib(1), config=QuantizeConfig(**CFG))
    assert report.summary["finetune"].startswith("not run: it needs at least two calibration samples")
    assert any("label-free fine-tuning not run" in w for w in report.warnings)


def test_effort_max_fine_tunes_and_no_finetune_turns_it_off():
    cfg = QuantizeConfig(effort="max").resolved()
    assert cfg.finetune is True
    assert QuantizeConfig(effort="max", finetune=False).resolved().finetune is False
    assert not QuantizeConfig().resolved().finetune
    _, report = quantize(_sparse_model(), _calib(), config=dataclasses.replace(
        QuantizeConfig(effort="max"), finetune_iters=10, finetune_crops=2, report_samples=2))
    assert isinstance(report.summary["finetune"], dict) and "effort_skipped" not in report.summary


def test_no_finetune_under_effort_max_says_it_was_turned_off():
    _, report = quantize(_sparse_model(), _calib(), config=QuantizeConfig(effort="max", finetune=False))
    assert report.summary["effort_skipped"] == ["label-free fine-tuning: turned off (--no-finetune)"]
    assert "finetune" not in report.summary


def test_the_student_starts_from_the_aligned_float_model_and_a_failed_run_returns_the_aligned_pass(monkeypatch):
    model, calib = _sparse_model(), _calib()
    aligned, arep = quantize(model, calib, config=QuantizeConfig(**{**CFG, "finetune": False}))
    assert arep.summary["scales_aligned"] > 0  # the setting this test needs
    seen = []

    def unchanged(student, plan, tparams, xs, targets, masks, cfg, feats=()):
        seen.append(ft.initializers(student))
        return ft.initializers(student), [1.0]

    monkeypatch.setattr(ft, "train_student", unchanged)
    _, report = quantize(model, calib, config=QuantizeConfig(**CFG, finetune_min_gain=-1e3, finetune_refit=False))
    assert report.summary["finetune_start"] == "aligned float model" and report.summary["finetune"]["kept"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert any(k in weights and weights[k].shape == v.shape and not np.allclose(weights[k], v, rtol=1e-3)
               for k, v in seen[0].items())  # the factors are in the weights it trains

    def fails(*args, **kw):
        raise ft.UnsupportedModelError("no gradient for ResizeGrad")

    monkeypatch.setattr(ft, "train_student", fails)
    q, report = quantize(model, calib, config=QuantizeConfig(**CFG))
    assert report.summary["finetune"].startswith("not run: no gradient for ResizeGrad")
    assert any("not run" in w for w in report.warnings) and report.summary["scales_aligned"] > 0
    x = _calib(1, seed=5)[0]
    np.testing.assert_array_equal(make_session(q).run(None, x)[0], make_session(aligned).run(None, x)[0])
