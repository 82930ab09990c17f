"""``onnxsq train`` as a new user meets it: a crop the model cannot take, and Python 3.12+ where
onnxruntime-training has no wheels (the extras' markers, the one-line message)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

from onnxsq.runtime import has_training

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "onnxsq"


def _seg_list(tmp: Path, n: int = 4, size: int = 64) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        img, lab = tmp / f"i{i}.png", tmp / f"l{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(img)
        Image.fromarray(rng.integers(0, 5, (size, size), dtype=np.uint8), mode="L").save(lab)
        images.append(str(img))
        labels.append(str(lab))
    (tmp / "images.txt").write_text("\n".join(images) + "\n")
    (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
    return tmp / "images.txt", tmp / "labels.txt"


@pytest.mark.skipif(not has_training(), reason="needs onnxruntime-training (the .venv environment)")
def test_a_crop_the_static_input_cannot_take_is_one_line_naming_the_crop_that_fits(sample_model, tmp_path):
    images, labels = _seg_list(tmp_path)
    out = tmp_path / "o.onnx"
    res = subprocess.run([str(BIN), "train", str(sample_model("jacintonet_seg")), "--data", str(images), "--labels",
                          str(labels), "--crop", "48", "48", "--iters", "2", "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr  # one line (rich may wrap it)
    assert "--crop 48 48 does not fit the model's input 'input'" in err and "use --crop 64 64" in err, err
    assert "Traceback" not in res.stderr and not out.exists()
    res = subprocess.run([str(BIN), "train", str(sample_model("jacintonet_seg")), "--data", str(images), "--labels",
                          str(labels), "--crop", "64", "64", "--iters", "2", "--batch-size", "2", "-o", str(out),
                          "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.is_file()


def test_check_crop_allows_dynamic_dims(sample_model):
    import onnx

    from onnxsq.data.loader import check_crop
    from onnxsq.errors import InvalidOptionError

    model = onnx.load(str(sample_model("jacintonet_seg")))
    check_crop(model, None)
    check_crop(model, (64, 64))
    with pytest.raises(InvalidOptionError, match="use --crop 64 64"):
        check_crop(model, (64, 48))
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "H"
    check_crop(model, (48, 32))  # a dynamic H and W take any crop


def _extra(name: str, python: str) -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    reqs = [Requirement(r) for r in extras[name]]
    return {r.name: r for r in reqs if r.marker is None or r.marker.evaluate(env)}


@pytest.mark.parametrize("extra, runtime", [("train-cpu", "onnxruntime-training-cpu"),
                                            ("train", "onnxruntime-training")])
def test_training_extras_install_on_python_312_without_onnxruntime_training(extra, runtime):
    """onnxruntime-training 1.19.2 (its last release) has wheels up to 3.11: on 3.12+ the extra must not ask
    for it (pip would fail with 'no matching distribution'), and brings plain onnxruntime instead."""
    old, new = _extra(extra, "3.11"), _extra(extra, "3.12")
    assert str(old[runtime].specifier) == "==1.19.2" and "onnxruntime" not in old
    assert runtime not in new and "torch" not in new and "onnx" not in new
    assert "onnxruntime" in new  # everything but training still works there


@pytest.mark.skipif(has_training(), reason="checks the message shown where onnxruntime-training is missing")
def test_train_on_python_312_says_it_needs_311(run_cli, monkeypatch, small_cnn, tmp_path):
    import onnx

    from onnxsq.cli import options

    onnx.save(small_cnn(np.random.default_rng(0)), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 6, 6), np.float32), y=np.zeros(4, np.int64))
    monkeypatch.setattr(options, "python_version", lambda: (3, 12))
    res = run_cli("train", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx")
    assert res.code == 1
    err = " ".join(res.err.split())
    assert "training needs Python <= 3.11 (this is 3.12)" in err and "1.19.2" in err, err
    assert len(res.err.strip().splitlines()) <= 3 and not (tmp_path / "o.onnx").exists()
    monkeypatch.setattr(options, "python_version", lambda: (3, 11))  # 3.11: the extra to install, as before
    res = run_cli("train", tmp_path / "m.onnx", "--data", tmp_path / "d.npz", "-o", tmp_path / "o.onnx")
    assert res.code == 1 and "onnxsq[train-cpu]" in " ".join(res.err.split()) and "3.11" not in res.err
