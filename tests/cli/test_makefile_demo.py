"""``make demo`` builds both environments the README's commands use, then runs the digits recipe."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_builds_both_environments():
    # -n: print, run nothing; -W pyproject.toml: as if it had changed, so every environment is out of date
    # --no-print-directory: under `make test` this make is a sub-make and would print "Leaving directory"
    res = subprocess.run(["make", "--no-print-directory", "-n", "-W", "pyproject.toml", "demo"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any("-m venv .venv" in line and ".venv-ort" not in line for line in lines), res.stdout
    assert any("-m venv .venv-ort" in line for line in lines), res.stdout
    assert "onnxsq pipeline sample_models/recipes/digits.toml -o demo-out" in lines[-1]
