"""The progress displays as a user sees them: the real command under a pseudo-terminal, its output
replayed on a terminal screen (pty_screen). One bar per phase, nothing stale left behind."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from pipeline_helpers import setup, write_recipe
from pty_screen import onnxsq_argv, run_in_pty

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


def _calib(tmp_path, n: int):
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(data / f"{i:02d}.npy", rng.standard_normal((3, 8, 8)).astype(np.float32))
    return data


def test_quantize_draws_one_bar_per_phase(conv_model, tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(conv_model().SerializeToString())
    run = run_in_pty(onnxsq_argv("quantize", model, "--calib", _calib(tmp_path, 20), "-o", tmp_path / "q.onnx",
                                 "--batch-size", "1"))
    assert run.code == 0, run.raw[-2000:]
    screen = run.screen
    assert screen.ever(r"^calibrate\b"), "no calibration bar was drawn"
    # one line per phase at any moment (the bug: a new, stale 0% line for every sample)
    assert screen.most_at_once(r"^calibrate\b") == 1
    assert screen.most_at_once(r"^evaluate\b") <= 1
    final = screen.final()
    assert not any(line.startswith(("calibrate", "evaluate")) for line in final), final[:5]
    assert final and final[0].startswith("quantize")  # the report table is what stays, from the top


def test_pipeline_shows_the_running_stage_and_one_line_per_stage(tmp_path):
    setup(tmp_path)
    recipe = write_recipe(tmp_path)
    run = run_in_pty(onnxsq_argv("pipeline", recipe, "-o", tmp_path / "wd"))
    assert run.code == 0, run.raw[-2000:]
    screen = run.screen
    assert screen.ever(r"^03-quantize\s+(calibrate|evaluate|running)"), "no progress while quantize ran"
    assert screen.most_at_once(r"^0\d-\w+\s+(running|calibrate|evaluate|eval|train)\b") <= 1
    final = screen.final()
    after = [line for line in final if line.startswith("after ")]
    assert [a.split(":")[0] for a in after] == ["after 01-threshold", "after 02-optimize", "after 03-quantize"]
    assert sum("┃ stage" in line for line in final) == 1  # one table, at the end, not one per stage
    assert not any(line.startswith(("01-", "02-", "03-")) and "running" in line for line in final)


def test_no_terminal_no_bar_and_no_blank_line_before_an_error(conv_model, tmp_path):
    """Piped stderr (logs, CI): no progress drawing, and an error is the first and only line."""
    import subprocess

    model = tmp_path / "net.onnx"
    model.write_bytes(conv_model().SerializeToString())
    res = subprocess.run(onnxsq_argv("quantize", model, "--calib", tmp_path / "none", "-o", tmp_path / "q.onnx"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("onnxsq: error: "), repr(res.stderr)
    res = subprocess.run(onnxsq_argv("quantize", model, "--calib", _calib(tmp_path, 3), "-o", tmp_path / "q.onnx"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "━" not in res.stderr and "calibrate" not in res.stderr


def test_piped_warnings_are_one_plain_line_each(conv_model, tmp_path):
    """Off a terminal a long warning stays one line (not wrapped at 80 columns and padded)."""
    import subprocess

    from PIL import Image

    model = tmp_path / "net.onnx"
    model.write_bytes(conv_model().SerializeToString())
    imgs = tmp_path / "imgs_with_a_long_folder_name_so_that_the_warning_passes_eighty_columns_for_sure"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "zz_broken.png").write_bytes(b"not a png")
    res = subprocess.run(onnxsq_argv("quantize", model, "--calib", imgs, "-o", tmp_path / "q.onnx"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("WARNING: ") for line in lines), res.stderr
    assert any("zz_broken.png" in line and len(line) > 100 for line in lines), res.stderr
    assert not any(line != line.rstrip() for line in lines)  # no padding to a width
