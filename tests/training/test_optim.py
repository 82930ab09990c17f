"""The in-place optimizer step: the textbook formulas bit for bit, masks exact, onnxruntime's own buffers."""

from __future__ import annotations

import numpy as np
import pytest
from builders import cnn
from train_helpers import needs_training

from onnxsq.training.optim import ADAM_BETAS, ADAM_EPS, Optimizer


def _reference(kind, w, g, slots, lr, decay, t, momentum):
    """The update as written in the formulas (fresh arrays for every term)."""
    w, slots = w.copy(), {k: v.copy() for k, v in slots.items()}
    if kind == "sgd":
        slots["v"] = momentum * slots["v"] + lr * (g + decay * w)
        return w - slots["v"], slots
    b1, b2 = ADAM_BETAS
    slots["m"] = b1 * slots["m"] + (1 - b1) * g
    slots["v"] = b2 * slots["v"] + (1 - b2) * g * g
    mhat, vhat = slots["m"] / (1 - b1 ** t), slots["v"] / (1 - b2 ** t)
    return w - lr * (mhat / (np.sqrt(vhat) + ADAM_EPS) + decay * w), slots


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("decay", [0.0, 1e-3])
def test_step_equals_the_formulas_bit_for_bit(kind, decay):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    opt = Optimizer(kind, {"w": w}, momentum=0.9)
    ref_w, ref_slots = w.copy(), {k: d["w"].copy() for k, d in opt.slots.items()}
    for t in range(1, 6):
        g = rng.standard_normal(w.shape).astype(np.float32)
        ref_w, ref_slots = _reference(kind, ref_w, g, ref_slots, 0.01, decay, t, 0.9)
        opt.step("w", w, g, lr=0.01, decay=decay, t=t, mask=lambda *a: None)
        assert np.array_equal(w, ref_w)
        for k in ref_slots:
            assert np.array_equal(opt.slots[k]["w"], ref_slots[k])


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_masked_entries_stay_exactly_zero(kind):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(200).astype(np.float32)
    keep = rng.random(200) < 0.5
    w[~keep] = 0
    opt = Optimizer(kind, {"w": w}, momentum=0.9)

    def mask(*arrays):
        for a in arrays:
            np.copyto(a, 0, where=~keep)

    for t in range(1, 4):
        opt.step("w", w, rng.standard_normal(200).astype(np.float32), lr=0.1, decay=1e-2, t=t, mask=mask)
    assert np.all(w[~keep] == 0) and np.all(np.signbit(w[~keep]) == 0) and np.all(w[keep] != 0)
    assert all(np.all(d["w"][~keep] == 0) for d in opt.slots.values())


@needs_training
def test_the_trainer_updates_onnxruntimes_buffers_in_place(digits, tmp_path):
    from onnxsq.training.config import TrainConfig
    from onnxsq.training.loop import Trainer

    trainer = Trainer(cnn((4, 8)), digits[0], TrainConfig(iters=2, batch_size=16, display=0))
    trainer._open(tmp_path)
    x, y = digits[0].x[:16], digits[0].y[:16]
    trainer.step(x, y)
    trainer.step(x, y)
    for n, p in trainer.params.items():
        assert np.shares_memory(trainer.w[n], p.data), n  # no copy of the weights to write back
        assert np.shares_memory(trainer._grads[n], p.grad), n  # the gradient views taken once stay valid
    for w in trainer.w.values():  # written in place, read by the next onnxruntime step: zero logits
        w[...] = 0
    assert float(np.asarray(trainer.module(x, y)).reshape(-1)[0]) == pytest.approx(np.log(10), rel=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_step_all_equals_the_per_array_step_with_masks_decays_and_multipliers(kind):
    """The flat update of every array at once: the per-array step's numbers (masks exact zeros)."""
    rng = np.random.default_rng(3)
    shapes = {"conv.w": (8, 3, 3, 3), "bn.scale": (8,), "bn.bias": (8,), "fc.w": (10, 8)}
    start = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    masks = {"conv.w": rng.random(shapes["conv.w"]) > 0.4}

    def apply_masks(name, *arrays):
        for a in arrays:
            np.copyto(a, 0, where=~masks[name])

    w_all, w_one = ({n: v.copy() for n, v in start.items()} for _ in range(2))
    all_, one = Optimizer(kind, w_all, momentum=0.9, flat=True), Optimizer(kind, w_one, momentum=0.9, flat=False)
    assert all_.flat and all_.names == list(shapes) and not one.flat
    assert Optimizer(kind, start, momentum=0.9).flat == (kind == "adamw")  # where it pays
    for t in range(1, 5):
        g = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        lrs = {n: 0.01 * (0.5 if n == "fc.w" else 1.0) * (0.9 ** t) for n in shapes}  # a multiplier, a schedule
        decays = {n: 1e-3 if n.endswith(".w") else 0.0 for n in shapes}
        all_.step_all(w_all, {n: v.copy() for n, v in g.items()}, lrs=tuple(lrs.values()),
                      decays=tuple(decays.values()), t=t, masked=["conv.w"], mask=apply_masks)
        for n in shapes:
            one.step(n, w_one[n], g[n].copy(), lr=lrs[n], decay=decays[n], t=t,
                     mask=(lambda *a, n=n: apply_masks(n, *a)) if n in masks else None)
        for n in shapes:
            np.testing.assert_array_equal(w_all[n], w_one[n], err_msg=n)
            for k in all_.slots:
                np.testing.assert_array_equal(all_.slots[k][n], one.slots[k][n], err_msg=f"{k}/{n}")
    assert not w_all["conv.w"][~masks["conv.w"]].any()
    assert not all_.slots["v"]["conv.w"][~masks["conv.w"]].any()


def test_mixed_dtypes_keep_the_per_array_step():
    opt = Optimizer("adamw", {"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float64)}, momentum=0.9)
    assert not opt.flat and opt.slots["v"]["b"].dtype == np.float64
