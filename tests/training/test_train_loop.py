"""The training loop: schedules, masks through the optimizer, BN statistics, resume, config."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from builders import cnn
from onnx import helper, numpy_helper
from train_helpers import interrupted_then_resumed, needs_training, values

from onnxsq.errors import InvalidOptionError
from onnxsq.training.config import TrainConfig, load_config_file
from onnxsq.training.loop import lr_at


def test_lr_schedules():
    assert lr_at(TrainConfig(lr=0.1), 500, 1000) == 0.1
    c = TrainConfig(lr=0.1, lr_policy="step", gamma=0.5, stepsize=100)
    assert [lr_at(c, i, 1000) for i in (0, 99, 100, 250)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    c = TrainConfig(lr=1.0, lr_policy="multistep", gamma=0.1, stepvalue=(10, 20))
    assert [lr_at(c, i, 100) for i in (9, 10, 19, 20)] == pytest.approx([1, 0.1, 0.1, 0.01])
    c = TrainConfig(lr=1.0, lr_policy="poly", power=2.0)
    assert lr_at(c, 50, 100) == pytest.approx(0.25)
    c = TrainConfig(lr=1.0, lr_policy="cosine")
    assert lr_at(c, 0, 100) == 1.0 and lr_at(c, 50, 100) == pytest.approx(0.5) and lr_at(c, 100, 100) < 1e-12
    # a schedule without its parameter would keep the rate constant: refused, naming the option
    with pytest.raises(InvalidOptionError, match="step needs --step-size N .config key stepsize"):
        TrainConfig(lr_policy="step")
    with pytest.raises(InvalidOptionError, match="multistep needs --milestones .* .config key stepvalue"):
        TrainConfig(lr_policy="multistep")


def test_config_file_keys_and_errors(tmp_path):
    p = tmp_path / "solver.toml"
    p.write_text('sparsity_target = 0.8\nsparsity_lr_mult = 0.01\nweight_connect_mode = "WEIGHT_DISCONNECTED_ELTWISE"\n'
                 'base_lr = 0.5\n')
    cfg = TrainConfig.from_mapping(load_config_file(p))
    assert (cfg.sparsity_target, cfg.sparsity_lr_mult, cfg.lr, cfg.masked) == (0.8, 0.01, 0.5, True)
    j = tmp_path / "solver.json"
    j.write_text(json.dumps({"sparsity_targt": 0.8}))
    with pytest.raises(InvalidOptionError, match="unknown key 'sparsity_targt'"):
        TrainConfig.from_mapping(load_config_file(j))
    j.write_text("{not json")
    with pytest.raises(InvalidOptionError, match="cannot parse"):
        load_config_file(j)
    with pytest.raises(InvalidOptionError, match="--stage"):
        TrainConfig(stage="l3")
    assert TrainConfig(stage="sparse").masked and not TrainConfig(stage="l1").masked


def _zero_half(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    for i, init in enumerate(model.graph.initializer):
        if init.name.endswith("weight"):
            w = numpy_helper.to_array(init).copy()
            w[rng.random(w.shape) < 0.5] = 0.0
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
    return model


@needs_training
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masks_keep_zeros_through_momentum_and_decay(digits, optimizer):
    import onnxsq

    model = _zero_half(cnn((8, 16)))
    trained, report = onnxsq.train(model, digits[0], stage="sparse", iters=40, batch_size=32, lr=0.05,
                                   optimizer=optimizer, momentum=0.9, weight_decay=1e-3, l1=1e-4)
    before, after = values(model), values(trained)
    for name in ("conv0.weight", "conv1.weight", "fc.weight"):
        zero = before[name] == 0
        assert np.all(after[name][zero] == 0), name
        assert np.mean(after[name][~zero] != before[name][~zero]) > 0.9, name  # the rest trained
        assert np.all(after[name][~zero] != 0)
    assert report.summary["conv_sparsity"] == pytest.approx(
        sum((before[n] == 0).sum() for n in ("conv0.weight", "conv1.weight"))
        / sum(before[n].size for n in ("conv0.weight", "conv1.weight")))


@needs_training
def test_without_masks_zeros_regrow(digits):
    import onnxsq

    model = _zero_half(cnn((8, 16)))
    trained, _ = onnxsq.train(model, digits[0], stage="l2", iters=10, lr=0.05)
    assert np.count_nonzero(values(trained)["conv1.weight"]) > np.count_nonzero(values(model)["conv1.weight"])


@needs_training
def test_bn_statistics_after_export_match_the_data(digits):
    import onnxsq

    model = cnn((4, 8), seed=2)
    # lr 0: the weights stay, so the running statistics must converge to the data's statistics.
    trained, _ = onnxsq.train(model, digits[0], stage="l2", iters=120, batch_size=64, lr=0.0)
    v = values(trained)
    probe = onnx.ModelProto()
    probe.CopyFrom(trained)
    probe.graph.output.append(helper.make_tensor_value_info("c0", onnx.TensorProto.FLOAT, None))
    from onnxsq.runtime import make_session

    c0 = make_session(probe).run(["c0"], {"input": digits[0].x})[0]
    mean, var = c0.mean(axis=(0, 2, 3)), c0.var(axis=(0, 2, 3))
    np.testing.assert_allclose(v["bn0.mean"], mean, rtol=0.03, atol=0.01 * np.sqrt(var).max())
    np.testing.assert_allclose(v["bn0.var"], var, rtol=0.06)
    assert not np.allclose(v["bn0.var"], 1.0)  # moved away from the initial identity statistics
    # the exported model is the input graph: same IR, opset, inputs, outputs, ops
    assert trained.ir_version == model.ir_version and trained.opset_import == model.opset_import
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in model.graph.node]
    assert trained.graph.input == model.graph.input and trained.graph.output == model.graph.output


@needs_training
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])  # adamw: its state in flat buffers (optim.step_all)
def test_resume_equals_uninterrupted(digits, tmp_path, optimizer):
    import onnxsq

    cfg = dict(optimizer=optimizer, stage="sparse", iters=24, batch_size=32, lr=0.05, lr_policy="cosine",
               weight_decay=1e-4,
               sparsity_target=0.5, sparsity_start_iter=4, sparsity_step_iter=4, sparsity_start_factor=0.2,
               sparsity_step_factor=0.1, sparsity_all_layers=True, threshold_value_max=10.0,
               threshold_value_maxratio=1.0, checkpoint_every=12, seed=7)
    model = cnn((8, 16), seed=5)
    straight, rep = onnxsq.train(model, digits[0], **cfg)
    resumed, rep2 = interrupted_then_resumed(model, digits[0], tmp_path / "run.ckpt.npz", 12, **cfg)
    assert rep2.summary["resumed_from"] == 12 and rep2.summary["iterations"] == 24
    a, b = values(straight), values(resumed)
    assert a.keys() == b.keys()
    for n in a:
        assert np.array_equal(a[n], b[n]), n
    assert rep.summary["conv_sparsity"] > 0.2  # the gradual thresholding ran
    assert not math.isnan(rep2.summary["final_loss"])


@needs_training
def test_wrong_checkpoint_is_a_one_line_error(digits, tmp_path):
    import onnxsq

    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(1))
    with pytest.raises(InvalidOptionError, match="not an onnxsq training checkpoint"):
        onnxsq.train(cnn((4,)), digits[0], iters=2, resume=bad)


@needs_training
def test_labels_out_of_range_is_a_data_error():
    import onnxsq
    from onnxsq.data.classification import ArrayDataset
    from onnxsq.errors import DataError

    data = ArrayDataset(np.zeros((8, 1, 8, 8), np.float32), np.full(8, 12, np.int64))
    with pytest.raises(DataError, match="outside the model.s 10 classes"):
        onnxsq.train(cnn((4,)), data, iters=1, batch_size=4)


@needs_training
def test_onnxruntime_threads_sleep_between_kernels(digits):
    from onnxsq.runtime import import_training
    from onnxsq.training.loop import Trainer

    import_training()
    import onnxruntime as ort

    for threads in (0, 2):
        trainer = Trainer(cnn((4,), seed=1), digits[0], TrainConfig(iters=1, threads=threads))
        opts = trainer._session_options(ort)
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == threads and opts.use_deterministic_compute
