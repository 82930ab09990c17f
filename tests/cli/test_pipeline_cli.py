"""``onnxsq pipeline``: tables, files, skip on re-run, --report, one-line errors, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import setup, write_recipe

pytest.importorskip("onnxruntime")


@pytest.fixture
def recipe(tmp_path: Path, untouched) -> Path:
    files = setup(tmp_path)
    untouched(files["model"])
    return write_recipe(tmp_path)


def test_runs_prints_tables_and_writes_the_report(run_cli, recipe, tmp_path):
    wd, rep = tmp_path / "wd", tmp_path / "r.json"
    res = run_cli("pipeline", recipe, "-o", wd, "--report", rep)
    assert res.code == 0, res.err
    assert "after 01-threshold" in res.out and "after 03-quantize" in res.out
    assert "03-quantize" in res.out and "accuracy" in res.out and "100.0%" in res.out
    data = json.loads(rep.read_text())
    assert data["pass_name"] == "pipeline"
    assert [c["action"] for c in data["candidates"]] == ["input", "ran", "ran", "ran"]
    assert data["summary"]["final int8 MAC share"] == 1.0
    assert (wd / "summary.md").is_file() and (wd / "03-quantize.onnx").is_file()

    res = run_cli("pipeline", recipe, "-o", wd)  # unchanged: no stage runs, no per-stage tables
    assert res.code == 0 and "after " not in res.out and res.out.count("cached") == 3

    res = run_cli("-q", "pipeline", recipe, "-o", wd, "--from", "quantize")
    assert res.code == 0 and res.out == ""
    res = run_cli("pipeline", recipe, "-o", wd, "--force")
    assert res.code == 0 and res.out.count("ran") >= 3


def test_broken_recipe_is_one_line(run_cli, recipe, tmp_path):
    recipe.write_text(recipe.read_text().replace('kind = "optimize"', 'kind = "optimize"\nverbose = true'))
    res = run_cli("pipeline", recipe, "-o", tmp_path / "wd")
    assert res.code == 1
    line = f"{recipe}:13: stage 2 (optimize): unknown key 'verbose'"
    assert line in " ".join(res.err.split()) and len(res.err.strip().splitlines()) <= 2  # rich may wrap
    assert not (tmp_path / "wd").exists()


def test_usage_errors(run_cli, recipe, tmp_path):
    assert run_cli("pipeline", recipe).code == 2  # -o is required
    res = run_cli("pipeline", recipe, "-o", tmp_path / "wd", "--from", "l7")
    assert res.code == 1 and "no stage 'l7'" in res.err
    res = run_cli("pipeline", tmp_path / "none.toml", "-o", tmp_path / "wd")
    assert res.code == 1 and "recipe file not found" in res.err


def test_real_subprocess(recipe, tmp_path):
    exe = Path(sys.executable).parent / "onnxsq"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed")
    wd = tmp_path / "wd"
    proc = subprocess.run([str(exe), "pipeline", str(recipe), "-o", str(wd), "--from", "threshold"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "summary:" in proc.stdout and (wd / "03-quantize.onnx").is_file() and (wd / "state.json").is_file()
    recipe.write_text(recipe.read_text().replace('kind = "quantize"', 'kind = "quantise"'))
    proc = subprocess.run([str(exe), "pipeline", str(recipe), "-o", str(wd)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown stage kind 'quantise'" in proc.stderr
