"""Built-in recipe data sources: deterministic, written once, refused parameters by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxsq.errors import InvalidOptionError
from onnxsq.pipeline.sources import materialize


def test_synthetic_shapes_are_deterministic_and_written_once(tmp_path: Path):
    spec = {"name": "synthetic-shapes", "seed": 3, "train": 6, "val": 2, "size": 24, "classes": 5}
    paths = materialize(spec, tmp_path / "a")
    with np.load(paths["train"]) as z:
        x, y = z["x"], z["y"]
    assert x.shape == (6, 3, 24, 24) and x.dtype == np.float32 and y.shape == (6, 24, 24)
    assert set(np.unique(y)) <= set(range(5)) and (y == 0).any() and (y > 0).any()
    for i in range(6):  # each shape's pixels share a colour far from the background's
        fg, bg = x[i][:, y[i] > 0], x[i][:, y[i] == 0]
        assert fg.size and bg.size
    stamp = paths["train"].stat().st_mtime_ns
    assert materialize(spec, tmp_path / "a") == paths and paths["train"].stat().st_mtime_ns == stamp
    other = materialize(spec, tmp_path / "b")
    assert other["train"].read_bytes() == paths["train"].read_bytes()
    assert paths["train"].name == "synthetic-shapes-train.npz"  # a name to read, not a hash
    before = paths["train"].read_bytes()
    assert materialize({**spec, "seed": 4}, tmp_path / "a") == paths  # other parameters: the files anew
    assert paths["train"].read_bytes() != before
    (tmp_path / "a" / "synthetic-shapes.source.json").unlink()  # an interrupted write: made again
    materialize(spec, tmp_path / "a")
    assert paths["train"].read_bytes() == before


def test_digits_split():
    pytest.importorskip("sklearn")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = materialize({"name": "sklearn-digits"}, Path(tmp))
        with np.load(paths["train"]) as tr, np.load(paths["val"]) as va:
            assert tr["x"].shape == (1347, 1, 8, 8) and va["x"].shape == (450, 1, 8, 8)
            assert 0.0 <= tr["x"].min() and tr["x"].max() <= 1.0
            assert sorted(np.unique(va["y"])) == list(range(10))


def test_bad_parameters(tmp_path: Path):
    with pytest.raises(InvalidOptionError, match="unknown data source"):
        materialize({"name": "cifar"}, tmp_path)
    with pytest.raises(InvalidOptionError, match="synthetic-shapes"):
        materialize({"name": "synthetic-shapes", "colour": 1}, tmp_path)
    with pytest.raises(InvalidOptionError, match="classes >= 2"):
        materialize({"name": "synthetic-shapes", "classes": 1}, tmp_path)


def test_a_source_name_is_data_on_the_command_line(tmp_path: Path, monkeypatch, run_cli, sample_model):
    """``--data sklearn-digits`` (``:val``) opens the built-in set, written once into $ONNXSQ_DATA."""
    pytest.importorskip("sklearn")
    pytest.importorskip("onnxruntime")
    from onnxsq.data.loader import open_dataset
    from onnxsq.errors import DataError

    monkeypatch.setenv("ONNXSQ_DATA", str(tmp_path / "cache"))
    assert len(open_dataset("sklearn-digits")) == 1347 and len(open_dataset("sklearn-digits:val")) == 450
    assert (tmp_path / "cache" / "sklearn-digits-val.npz").is_file()
    with pytest.raises(InvalidOptionError, match="train or val"):
        open_dataset("sklearn-digits:test")
    with pytest.raises(DataError, match="built-in data sets: sklearn-digits"):
        open_dataset(tmp_path / "nothere.npz")
    res = run_cli("eval", sample_model("digits_cnn"), "--data", "sklearn-digits:val")
    assert res.code == 0, res.err
    assert "450" in res.out and "top1" in res.out
