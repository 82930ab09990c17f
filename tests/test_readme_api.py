"""The README's Python API blocks, run as written (so the documented API stays true).

The blocks are read from README.md, not copied here; only the files their ``# yours:`` placeholders
name are put in place first (a sample model, calibration images, training data), in a fresh folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")


def readme_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 4)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _digits_npz(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int64)
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.2
    for i, c in enumerate(y):  # a learnable toy rule: the bright row is the class
        x[i, 0, c % 8] += 0.8
    np.savez(path, x=x, y=y)


def _run(code: str, folder: Path) -> dict:
    here = Path.cwd()
    os.chdir(folder)
    try:
        scope: dict = {"__name__": "__readme__"}
        exec(compile(code, "README.md", "exec"), scope)  # the documented code, as written
        return scope
    finally:
        os.chdir(here)


def test_readme_has_the_two_blocks_and_marks_its_placeholders():
    blocks = readme_blocks()
    assert len(blocks) == 2
    deploy, training = blocks
    assert "# yours:" in deploy and "my_deploy_specific_step" in deploy and "def my_deploy_specific_step" in deploy
    for name in ("exported.onnx", "calib.npz\","):
        line = next(line for line in deploy.splitlines() if name in line)
        assert "# yours:" in line, line
    for name in ("train.npz", "net.onnx"):
        line = next(line for line in training.splitlines() if name in line)
        assert "# yours:" in line, line


def test_readme_deployment_block_runs_as_written(tmp_path, sample_model):
    src = sample_model("digits_cnn")
    shutil.copy(src, tmp_path / "exported.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32))
    scope = _run(readme_blocks()[0], tmp_path)
    out = onnx.load(str(tmp_path / "deploy.onnx"))
    onnx.checker.check_model(out)
    assert {n.op_type for n in out.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert out.doc_string == "deployed by my flow"  # the placeholder step ran on the ModelProto
    assert scope["rep"].pass_name == "quantize"
    assert (tmp_path / "exported.onnx").read_bytes() == src.read_bytes()


def test_readme_training_block_runs_as_written(tmp_path, sample_model):
    from onnxsq import runtime

    if not runtime.has_training():
        pytest.skip("needs onnxruntime-training (the .venv environment)")
    shutil.copy(sample_model("digits_cnn"), tmp_path / "net.onnx")
    _digits_npz(tmp_path / "train.npz", 64, 0)
    _digits_npz(tmp_path / "val.npz", 32, 1)
    scope = _run(readme_blocks()[1], tmp_path)
    rep = scope["rep"]
    assert rep.summary["val_top1"] == pytest.approx(
        __import__("onnxsq").evaluate(scope["model"], str(tmp_path / "val.npz")).summary["top1"])


def test_errors_named_in_the_readme_are_attributes_of_onnxsq():
    import onnxsq
    from onnxsq import errors

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    named = set(re.findall(r"`(?:onnxsq\.)?(\w+Error)`", section))
    assert {"OnnxsqError", "DataError", "ModelLoadError"} <= named
    for name in named:
        assert getattr(onnxsq, name) is getattr(errors, name)
        assert issubclass(getattr(onnxsq, name), onnxsq.OnnxsqError)
    assert onnxsq.TrainConfig is __import__("onnxsq.training.config", fromlist=["TrainConfig"]).TrainConfig


def test_a_path_where_a_dataset_belongs_is_opened(tmp_path, sample_model):
    """evaluate (and train) take a path as well as a dataset; anything else is one clear error."""
    import onnxsq

    _digits_npz(tmp_path / "val.npz", 16, 2)
    by_path = onnxsq.evaluate(str(sample_model("digits_cnn")), str(tmp_path / "val.npz")).summary
    by_dataset = onnxsq.evaluate(str(sample_model("digits_cnn")), onnxsq.open_dataset(tmp_path / "val.npz")).summary
    assert by_path == by_dataset and by_path["samples"] == 16
    with pytest.raises(onnxsq.InvalidOptionError, match="expected a dataset"):
        onnxsq.evaluate(str(sample_model("digits_cnn")), 42)
