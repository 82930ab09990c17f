"""``onnxsq train``: flags over --config, outputs, one-line errors, the missing-runtime message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxsq.cli.main import run
from onnxsq.runtime import has_training

needs_training = pytest.mark.skipif(not has_training(), reason="onnxruntime-training is not installed here")


@pytest.fixture()
def files(tmp_path, small_cnn):
    onnx.save(small_cnn(np.random.default_rng(0)), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 64)
    x = (rng.standard_normal((64, 1, 6, 6)) * 0.2 + y[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    return tmp_path / "m.onnx", tmp_path / "train.npz", tmp_path


@pytest.mark.skipif(has_training(), reason="checks the message shown where onnxruntime-training is missing")
def test_missing_training_runtime_names_the_extra(files, capsys):
    model, data, tmp = files
    assert run(["train", str(model), "--data", str(data), "-o", str(tmp / "o.onnx")]) == 1
    err = capsys.readouterr().err
    assert "onnxsq[train-cpu]" in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp / "o.onnx").exists()


@needs_training
def test_train_with_config_and_flag_override(files, capsys):
    model, data, tmp = files
    (tmp / "solver.json").write_text(json.dumps({"base_lr": 5.0, "max_iter": 3, "display_sparsity": 1,
                                                 "sparsity_target": 0.9, "momentum": 0.5}))
    rc = run(["-q", "train", str(model), "--data", str(data), "--config", str(tmp / "solver.json"), "--lr", "0.05",
              "--stage", "sparse", "--batch-size", "16", "-o", str(tmp / "o.onnx"), "--report", str(tmp / "r.json")])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp / "r.json").read_text())["summary"]
    assert summary["iterations"] == 3 and summary["stage"] == "sparse" and summary["batch_size"] == 16
    assert summary["final_lr"] == 0.05  # the flag beat the file's base_lr
    out = onnx.load(str(tmp / "o.onnx"))
    assert out.ir_version == 7 and out.graph.input == onnx.load(str(model)).graph.input


@needs_training
def test_bad_inputs_are_one_line_errors(files, capsys):
    model, data, tmp = files
    (tmp / "bad.json").write_text('{"sparsity_targt": 0.8}')
    cases = [
        (["--config", str(tmp / "bad.json")], "unknown key 'sparsity_targt'"),
        (["--iters", "2", "--epochs", "1"], "not both"),
        (["--data", str(tmp / "none.npz")], "no such file"),
    ]
    for extra, msg in cases:
        args = ["train", str(model), "--data", str(data), "-o", str(tmp / "o.onnx"), *extra]
        assert run(args) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert msg in err
    assert not (tmp / "o.onnx").exists()


@needs_training
def test_real_subprocess_run_with_checkpoint_and_resume(files):
    model, data, tmp = files
    base = [sys.executable, "-m", "onnxsq.cli.main", "-q", "train", str(model), "--data", str(data),
            "--iters", "4", "--batch-size", "16", "--lr", "0.05", "-o", str(tmp / "o.onnx")]
    done = subprocess.run([*base, "--checkpoint-every", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ckpt = tmp / "o.onnx.ckpt.npz"
    assert ckpt.exists()
    again = subprocess.run([*base, "--resume", str(ckpt), "--report", str(tmp / "r.json")], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp / "r.json").read_text())["summary"]["resumed_from"] == 4
