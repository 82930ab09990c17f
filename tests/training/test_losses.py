"""The per-pixel cross-entropy of the training graph against numpy and onnxruntime's own op."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from train_helpers import needs_training

from onnxsq.graph import UniqueNames
from onnxsq.runtime import make_session
from onnxsq.training.losses import add_pixel_cross_entropy

IGNORE = 255


def _reference(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(loss, d loss / d x) in float64: mean over kept pixels of logsumexp - x[label]."""
    x = x.astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    kept = y != IGNORE
    safe = np.where(kept, y, 0)
    onehot = np.moveaxis(np.eye(x.shape[1])[safe], -1, 1)
    lse = np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)) + x.max(axis=1)
    nll = lse - (x * onehot).sum(axis=1)
    count = max(int(kept.sum()), 1)
    grad = (p - onehot) * kept[:, None] / count
    return float((nll * kept).sum() / count), grad


def _loss_model(classes: int) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(
        [], "ce", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", classes, "H", "W"]),
                   helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "H", "W"])], []),
        opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    loss = add_pixel_cross_entropy(model, "x", "labels", IGNORE, UniqueNames(model))
    model.graph.output.append(helper.make_tensor_value_info(loss, TensorProto.FLOAT, []))
    onnx.checker.check_model(model, full_check=True)
    return model


def _batch(rng, n=2, c=3, h=4, w=5, scale=3.0):
    x = (rng.standard_normal((n, c, h, w)) * scale).astype(np.float32)
    y = rng.integers(0, c, (n, h, w)).astype(np.int64)
    y[rng.random((n, h, w)) < 0.3] = IGNORE
    return x, y


def test_loss_matches_numpy_and_onnxruntimes_op_with_ignored_pixels_and_large_logits():
    rng = np.random.default_rng(0)
    sess = make_session(_loss_model(3))
    op = helper.make_model(helper.make_graph(
        [helper.make_node("SoftmaxCrossEntropyLoss", ["x", "labels"], ["l"], ignore_index=IGNORE)], "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("labels", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("l", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 15)])
    op.ir_version = 8
    ref_op = make_session(op)
    for scale in (0.1, 3.0, 300.0, 3e4):  # 3e4: exp would overflow without the shift
        x, y = _batch(rng, scale=scale)
        got = float(sess.run(None, {"x": x, "labels": y})[0])
        want, _ = _reference(x, y)
        assert np.isfinite(got)
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (scale, got, want)
        theirs = float(ref_op.run(None, {"x": x, "labels": y})[0])
        assert abs(got - theirs) <= 1e-5 * max(1.0, abs(theirs)), (scale, got, theirs)


def test_every_pixel_ignored_gives_zero_not_nan():
    x, y = _batch(np.random.default_rng(1))
    y[...] = IGNORE
    assert float(make_session(_loss_model(3)).run(None, {"x": x, "labels": y})[0]) == 0.0


@needs_training
def test_gradient_is_softmax_minus_onehot_over_the_kept_pixels(tmp_path):
    """A 1×1 Conv segmentation head trained by onnxruntime: its weight gradient against numpy's."""
    from onnxruntime.training.api import CheckpointState, Module

    from onnxsq.training.artifacts import build_training_graph, generate

    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="head")], "seg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 5])], [numpy_helper.from_array(w, "w")]),
        opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    train_path, ckpt = generate(build_training_graph(model), tmp_path, task="segmentation", l1=0.0,
                                ignore_label=IGNORE, label_rank=3)
    state = CheckpointState.load_checkpoint(str(ckpt))
    module = Module(str(train_path), state, None, "cpu")
    module.train()
    x = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)
    _, labels = _batch(rng)
    loss = float(np.asarray(module(x, labels)).reshape(-1)[0])
    logits = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x)
    want_loss, dlogits = _reference(logits, labels)
    want = np.einsum("nohw,nchw->oc", dlogits, x)[:, :, None, None]
    assert abs(loss - want_loss) <= 1e-5 * max(1.0, want_loss)
    np.testing.assert_allclose(state.parameters["w"].grad, want, rtol=1e-4, atol=1e-6)
