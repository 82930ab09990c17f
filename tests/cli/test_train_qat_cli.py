"""``onnxsq train --stage qat``: flags, the parameters file, one-line errors, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxsq.calibration import pow2
from onnxsq.cli.main import run
from onnxsq.params import params_from_model, read_params
from onnxsq.runtime import has_training

needs_training = pytest.mark.skipif(not has_training(), reason="onnxruntime-training is not installed here")
ONNXSQ = Path(sys.executable).parent / "onnxsq"


@pytest.fixture()
def files(tmp_path, small_cnn):
    """A conv → BN → ReLU → GAP → Gemm model and a 4-class .npz separable by brightness."""
    rng = np.random.default_rng(0)
    onnx.save(small_cnn(rng, bn=True), str(tmp_path / "m.onnx"))
    y = rng.integers(0, 4, 96)
    x = (rng.standard_normal((96, 1, 6, 6)) * 0.2 + y[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    return tmp_path / "m.onnx", tmp_path / "train.npz", tmp_path


@needs_training
def test_qat_flags_params_file_and_report(files, capsys):
    model, data, tmp = files
    (tmp / "solver.toml").write_text("quantization_start_iter = 2\nbits = 8\nquant_update_every = 2\n")
    rc = run(["-q", "train", str(model), "--data", str(data), "--stage", "qat", "--config", str(tmp / "solver.toml"),
              "--iters", "8", "--quantization-start-iter", "3", "--weight-bits", "4", "--lr", "0.02",
              "--batch-size", "16", "--params-out", str(tmp / "p.json"), "-o", str(tmp / "q.onnx"),
              "--report", str(tmp / "r.json")])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp / "r.json").read_text())["summary"]
    assert summary["quantization_start_iter"] == 3  # the flag beat the config file
    assert summary["batchnorm_folded_first"] == 1 and summary["weight_bits"] == 4 and summary["bits"] == 8
    q = onnx.load(str(tmp / "q.onnx"))
    onnx.checker.check_model(q)
    assert q.ir_version == 7 and not any(n.op_type == "BatchNormalization" for n in q.graph.node)
    held, written = params_from_model(q), read_params(tmp / "p.json")
    assert set(held) <= set(written)
    for name, p in held.items():
        assert p.shift == written[name].shift and p.signed == written[name].signed, name
    assert written["conv.weight"].bits == 4 and written["r"].bits == 8 and not written["r"].signed
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear":
            assert pow2.is_power_of_two(inits[n.input[1]])


@needs_training
def test_qat_bad_options_are_one_line_errors(files, capsys):
    model, data, tmp = files
    cases = [
        (["--bits", "4"], "bits only applies to quantization-aware training (qat)"),
        (["--params-out", str(tmp / "p.json")], "only the qat stage writes quantization parameters"),
        (["--stage", "qat", "--quantization-start-iter", "0"], "quantization_start_iter must be at least 1"),
        (["--stage", "qat", "--bits", "12"], "opset 21"),
    ]
    for extra, msg in cases:
        assert run(["train", str(model), "--data", str(data), "--iters", "2", "-o", str(tmp / "o.onnx"), *extra]) == 1
        err = capsys.readouterr().err
        assert msg in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "o.onnx").exists() and not (tmp / "p.json").exists()


@needs_training
def test_qat_real_subprocess(files):
    model, data, tmp = files
    exe = [str(ONNXSQ)] if ONNXSQ.exists() else [sys.executable, "-m", "onnxsq.cli.main"]
    done = subprocess.run([*exe, "train", str(model), "--data", str(data), "--stage", "qat", "--iters", "4",
                           "--quantization-start-iter", "2", "--batch-size", "16", "-o", str(tmp / "q.onnx")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "quantized_from_iter" in done.stdout and (tmp / "q.onnx").exists()


@pytest.mark.skipif(has_training(), reason="checks the message shown where onnxruntime-training is missing")
def test_qat_without_training_runtime_names_the_extra(files, capsys):
    model, data, tmp = files
    assert run(["train", str(model), "--data", str(data), "--stage", "qat", "-o", str(tmp / "q.onnx")]) == 1
    err = capsys.readouterr().err
    assert "onnxsq[train-cpu]" in " ".join(err.split()) and len(err.strip().splitlines()) == 1
