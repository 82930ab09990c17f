"""-v/-q work after the command name as well as before it."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("argv_quiet", [["-q", "optimize"], ["optimize", "-q"]])
def test_quiet_anywhere_silences_tables(tmp_path, sample_model, run_cli, argv_quiet):
    src = sample_model("digits_cnn")
    out = tmp_path / "out.onnx"
    res = run_cli(*argv_quiet, src, "-o", out)
    assert res.code == 0, res.err
    assert res.out == ""
    assert out.exists()


def test_without_quiet_the_report_is_rendered(tmp_path, sample_model, run_cli):
    res = run_cli("optimize", sample_model("digits_cnn"), "-o", tmp_path / "out.onnx")
    assert res.code == 0 and "fold-batchnorm" in res.out


def test_verbose_after_command_logs_info(tmp_path, sample_model, run_cli):
    res = run_cli("optimize", sample_model("digits_cnn"), "-o", tmp_path / "out.onnx", "-v")
    assert res.code == 0
    assert "wrote" in res.err  # model_io logs the write at INFO, shown from -v on
    silent = run_cli("optimize", sample_model("digits_cnn"), "-o", tmp_path / "o2.onnx")
    assert "wrote" not in silent.err
