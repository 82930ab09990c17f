"""Gradual sparsification reaches its target where the caps allow, and names what held it back."""

from __future__ import annotations

import numpy as np
from builders import cnn
from onnx import numpy_helper

from onnxsq.training.artifacts import classify_params
from onnxsq.training.config import TrainConfig
from onnxsq.training.sparsity import SparsityControl

GRADUAL = dict(stage="sparse", sparsity_target=0.8, sparsity_start_iter=0, sparsity_step_iter=1,
               sparsity_start_factor=0.6, sparsity_step_factor=0.05, sparsity_all_layers=True)


def _steps(cfg: TrainConfig, n: int = 40):
    model = cnn((8, 16), seed=3)
    _t, _f, weights, conv = classify_params(model)
    values = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    control = SparsityControl(cfg, values, conv, list(weights), ops=weights)
    for it in range(1, n + 1):
        control.after_update(it, values)
    return control, values


def test_low_layers_follow_past_factor_one_to_the_target():
    # both layers are of the original's "low" class (thresholded at factor * 0.5): with the factor stopped
    # at 1 they would stop at 50%; without caps in the way the target is reached
    control, values = _steps(TrainConfig(**GRADUAL, threshold_value_max=10.0, threshold_value_maxratio=1.0))
    total = control.total_sparsity(values)
    assert 0.8 <= total < 0.86, total
    assert control.factor > 1.0
    assert control.shortfall(values) is None


def test_a_run_held_back_by_the_caps_says_which_layers_and_which_option():
    control, values = _steps(TrainConfig(**GRADUAL))  # the default caps: 0.2 and 0.2 x max|w|
    total = control.total_sparsity(values)
    assert total < 0.8
    msg = control.shortfall(values)
    assert msg is not None and f"conv sparsity {total:.4f}, below sparsity_target 0.8" in msg
    for name, s in control.layer_sparsity(values).items():
        assert f"{name} by the caps" in msg and f"at {s:.3f}" in msg
    assert "a larger threshold_value_maxratio than 0.2" in msg
    # each layer is where its caps stop it: every weight below its channel's cap is zero
    for name in control.conv:
        rows = np.abs(values[name].reshape(values[name].shape[0], -1))
        cap = np.minimum(0.2, 0.2 * rows.max(axis=1))
        assert np.all((rows >= cap[:, None]) | (rows == 0)), name


def test_a_run_held_back_by_the_schedule_says_so():
    cfg = TrainConfig(**GRADUAL, threshold_value_max=10.0, threshold_value_maxratio=1.0)
    control, values = _steps(cfg, n=2)
    msg = control.shortfall(values)
    assert msg is not None and "by the schedule" in msg and "sparsity_step_factor" in msg


def test_layers_left_out_are_named_with_the_option_that_takes_them_in():
    cfg = TrainConfig(**{**GRADUAL, "sparsity_all_layers": False})
    control, values = _steps(cfg, n=3)
    msg = control.shortfall(values)
    assert msg is not None and "conv0.weight too small" in msg and "sparsity_all_layers: true" in msg


def test_no_gradual_schedule_no_message():
    control, values = _steps(TrainConfig(stage="sparse", sparsity_target=0.9), n=2)
    assert control.shortfall(values) is None


def test_global_allocation_reaches_the_target_with_one_threshold_for_the_pool():
    # cnn((8, 16)): conv0 (fan-in 9) has larger He weights than conv1 (fan-in 72), so the pooled
    # threshold zeroes more of conv1; every zero is below one threshold, every survivor above it
    cfg = TrainConfig(**GRADUAL, sparsity_allocation="global", threshold_value_max=10.0, threshold_value_maxratio=1.0)
    model = cnn((8, 16), seed=3)
    _t, _f, weights, conv = classify_params(model)
    values = {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    dense = {n: values[n].copy() for n in conv}
    control = SparsityControl(cfg, values, conv, list(weights), ops=weights)
    for it in range(1, 41):
        control.after_update(it, values)
    total = control.total_sparsity(values)
    assert 0.8 <= total < 0.86, total
    assert control.shortfall(values) is None
    layer = control.layer_sparsity(values)
    assert layer["conv1.weight"] > total > layer["conv0.weight"], layer
    zeroed = np.concatenate([np.abs(dense[n])[values[n] == 0] for n in conv])
    kept = np.concatenate([np.abs(dense[n])[values[n] != 0] for n in conv])
    assert zeroed.max() < kept.min()
    assert all(np.array_equal(values[n][values[n] != 0], dense[n][values[n] != 0]) for n in conv)


def test_global_allocation_keeps_the_caps_and_a_bad_value_is_refused():
    import pytest

    from onnxsq.errors import InvalidOptionError

    control, values = _steps(TrainConfig(**GRADUAL, sparsity_allocation="global", threshold_value_maxratio=0.2))
    for name in control.conv:
        a = np.abs(values[name])
        assert np.all((a >= min(0.2, 0.2 * a.max())) | (a == 0)), name  # the default caps: 0.2 and 0.2 x max|w|
    msg = control.shortfall(values)
    assert msg is not None and "by the caps" in msg
    with pytest.raises(InvalidOptionError, match="sparsity_allocation must be layer or global"):
        TrainConfig(**GRADUAL, sparsity_allocation="pooled")
