"""onnxsq threshold: the original's flag spellings, kebab-case, errors, and a real subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.cli.main import run

ORIGINAL_EXAMPLE = (
    "threshold --threshold_fraction_low 0.40 --threshold_fraction_mid 0.80 --threshold_fraction_high 0.80 "
    "--threshold_value_max 0.2 --threshold_value_maxratio 0.2 --threshold_step_factor 1e-6 "
    "--model=deploy.onnx --gpu=0 --weights=trained.onnx --output=thresholded.onnx"
).split()


def make_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 3, 3, 3)) * 0.1).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((64, 32, 3, 3)) * 0.05).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "cli", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), str(path))
    return path


def zeros(path: Path) -> dict[str, float]:
    m = onnx.load(str(path))
    return {t.name: float(np.mean(numpy_helper.to_array(t) == 0)) for t in m.graph.initializer}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_model(tmp_path / "trained.onnx")
    return tmp_path


def test_the_original_example_line(workdir, capsys):
    assert run(ORIGINAL_EXAMPLE + ["--report", "r.json"]) == 0
    err = capsys.readouterr().err
    assert "--gpu is ignored" in err and "--model deploy.onnx is ignored" in err
    z = zeros(workdir / "thresholded.onnx")
    assert 0 < z["w1"] <= 0.40 and 0 < z["w2"] <= 0.80
    report = json.loads((workdir / "r.json").read_text())
    assert [c["details"]["class"] for c in report["candidates"]] == ["low", "mid"]
    assert [c["details"]["fraction"] for c in report["candidates"]] == [0.4, 0.8]


def test_kebab_case_is_the_same(workdir):
    under = ["threshold", "trained.onnx", "-o", "a.onnx", "--threshold_fraction_low", "0.3",
             "--threshold_value_maxratio", "0.5", "--threshold_step_factor", "1e-4", "--search", "grid"]
    kebab = [a.replace("_", "-") if a.startswith("--") else a for a in under]
    kebab[kebab.index("a.onnx")] = "b.onnx"
    assert run(under) == 0 and run(kebab) == 0
    assert digest(workdir / "a.onnx") == digest(workdir / "b.onnx")
    assert zeros(workdir / "a.onnx")["w1"] <= 0.3


def test_renders_thresholds_and_denominators(workdir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table headers at the default 80
    assert run(["threshold", "trained.onnx", "--channelwise", "--layer", "conv1=0.2", "--exclude", "nothing"]) == 0
    out, err = capsys.readouterr()
    assert "t exact" in out and "t grid" in out and "conv weights" in out and "all float parameters" in out
    assert "override" in out and "'nothing' matched no Conv layer" in err
    assert (workdir / "trained.thresholded.onnx").exists()  # the default output name


def test_global_and_ops(workdir):
    assert run(["threshold", "trained.onnx", "-o", "g.onnx", "--global", "0.5", "--ops", "Conv,Gemm",
                "--threshold-value-maxratio", "1"]) == 0
    m = onnx.load("g.onnx")
    w = np.concatenate([numpy_helper.to_array(t).ravel() for t in m.graph.initializer])
    assert 0.49 < np.mean(w == 0) <= 0.5


@pytest.mark.parametrize("args,needle", [
    (["--threshold_fraction_low", "1.5"], "fraction_low"),
    (["--threshold-fraction-high", "-0.2"], "fraction_high"),
    (["--threshold_value_max", "-1"], "value_max"),
    (["--threshold_step_factor", "0"], "step_factor"),
    (["--layer", "conv1"], "PATTERN=FRACTION"),
    (["--layer", "conv1=2"], "conv1"),
    (["--ops", "Conv,Add"], "ops"),
    (["--global", "0.5", "--channelwise"], "channelwise"),
    (["--weights", "other.onnx"], "two input models"),
    (["-o", "trained.onnx"], "overwrite"),
])
def test_bad_values_one_line_error_input_untouched(workdir, capsys, args, needle):
    before = digest(workdir / "trained.onnx")
    assert run(["threshold", "trained.onnx", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and needle in err and "Traceback" not in err
    assert digest(workdir / "trained.onnx") == before
    assert not (workdir / "trained.thresholded.onnx").exists()


def test_no_input(workdir, capsys):
    assert run(["threshold", "--gpu", "0"]) == 1
    assert "no input model" in capsys.readouterr().err


def test_help_states_defaults(capsys):
    assert run(["threshold", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--threshold_fraction_low", "--threshold-fraction-low", "default: 0.4", "default: 0.9",
                 "1e-4", "zero almost nothing", "--global", "--channelwise"):
        assert text in out, text


def test_real_subprocess(workdir):
    exe = Path(sys.executable).parent / "onnxsq"
    proc = subprocess.run([str(exe), *ORIGINAL_EXAMPLE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert zeros(workdir / "thresholded.onnx")["w2"] > 0.5
    bad = subprocess.run([str(exe), "threshold", "trained.onnx", "--threshold_fraction_mid", "7"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
