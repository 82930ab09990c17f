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


def _train_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "onnxsq.cli.main", "train", str(model), "--data", str(data), "--batch-size", "16",
            "--lr", "0.05", "-o", str(out), *extra]


@needs_training
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(files):
    import signal

    model, data, tmp = files
    out, ckpt = tmp / "o.onnx", tmp / "o.onnx.ckpt.npz"
    proc = subprocess.Popen(_train_cmd(model, data, out, "--iters", "1000000", "--display", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # stderr is no terminal: one line per display interval
        assert first.startswith("train 1/1000000  loss "), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and f"checkpoint: {ckpt}; resume with --resume {ckpt}" in lines[0], err
    assert "Traceback" not in err and not out.exists()
    n = int(lines[0].split()[3].rstrip(";"))
    with np.load(ckpt) as z:
        assert json.loads(z["meta"].tobytes().decode())["iteration"] == n >= 1
    # resuming with another --lr warns by name; the finished run removes the checkpoint it resumed from
    done = subprocess.run(_train_cmd(model, data, out, "--iters", str(n + 2), "--resume", str(ckpt), "--lr", "0.01",
                                     "--report", str(tmp / "r.json")), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    err = " ".join(done.stderr.split())
    assert "resuming with lr 0.01 where the checkpoint's run had 0.05" in err
    summary = json.loads((tmp / "r.json").read_text())["summary"]
    assert summary["resumed_from"] == n and summary["iterations"] == n + 2 and "lr" in summary["resume_changed"]
    assert out.exists() and not ckpt.exists()


@needs_training
def test_checkpoint_every_keeps_the_file_and_resume_refuses_another_stage(files):
    model, data, tmp = files
    out, ckpt = tmp / "o.onnx", tmp / "o.onnx.ckpt.npz"
    done = subprocess.run(_train_cmd(model, data, out, "-q", "--iters", "2", "--checkpoint-every", "1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and ckpt.exists(), done.stderr
    again = subprocess.run(_train_cmd(model, data, out, "--iters", "3", "--resume", str(ckpt), "--stage", "sparse"),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "cannot resume a sparse/sgd/classification run" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and ckpt.exists()


@needs_training
def test_piped_output_logs_one_line_per_display_interval(files):
    model, data, tmp = files
    done = subprocess.run(_train_cmd(model, data, tmp / "o.onnx", "--iters", "6", "--display", "2", "--report",
                                     str(tmp / "r.json")), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("train ")]
    assert [ln.split()[1] for ln in lines] == ["2/6", "4/6", "6/6"], done.stderr
    assert all("sparsity" not in ln for ln in lines)  # an l2 run makes no zeros: none shown
    final = json.loads((tmp / "r.json").read_text())["summary"]["final_loss"]
    assert lines[-1].split()[3] == f"{final:.4f}"  # the last line's loss is the summary's final_loss


@needs_training
@pytest.mark.parametrize(("extra", "msg"), [
    (["--lr-schedule", "step"], "--lr-schedule step needs --step-size"),
    (["--lr-schedule", "multistep"], "--lr-schedule multistep needs --milestones"),
])
def test_lr_schedules_without_their_parameter_are_errors(files, capsys, extra, msg):
    model, data, tmp = files
    assert run(["train", str(model), "--data", str(data), "--iters", "2", "-o", str(tmp / "o.onnx"), *extra]) == 1
    err = capsys.readouterr().err
    assert msg in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp / "o.onnx").exists()


@needs_training
def test_gradual_sparsification_short_of_its_target_warns_once(files):
    model, data, tmp = files
    (tmp / "g.json").write_text(json.dumps({"sparsity_target": 0.8, "sparsity_start_iter": 0, "sparsity_step_iter": 1,
                                            "sparsity_step_factor": 0.2, "sparsity_all_layers": True}))
    done = subprocess.run(_train_cmd(model, data, tmp / "o.onnx", "--stage", "sparse", "--iters", "6", "--config",
                                     str(tmp / "g.json"), "--report", str(tmp / "r.json")),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    err = " ".join(done.stderr.split())
    assert err.count("below sparsity_target 0.8") == 1 and "threshold_value_max" in err, err
    report = json.loads((tmp / "r.json").read_text())
    assert report["summary"]["conv_sparsity"] < 0.8 and len(report["warnings"]) == 1


@needs_training
def test_terminal_bar_shows_no_sparsity_in_an_l2_run(files):
    import os
    import pty

    model, data, tmp = files
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen(_train_cmd(model, data, tmp / "o.onnx", "--iters", "40"), stdin=follower,
                            stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "train" in screen and "loss " in screen, screen  # the bar was drawn
    assert "sparsity" not in screen
