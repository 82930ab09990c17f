"""Classification/array datasets: .npz, image folders, task from the label shape, bad data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxsq.data.images import Preprocess
from onnxsq.data.loader import open_dataset
from onnxsq.errors import DataError


def test_npz_tasks_follow_the_label_shape(tmp_path):
    x = np.zeros((4, 1, 6, 6), np.float32)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(4))
    np.savez(tmp_path / "s.npz", x=x, y=np.zeros((4, 6, 6), np.uint8))
    assert open_dataset(tmp_path / "c.npz").task == "classification"
    assert open_dataset(tmp_path / "s.npz").task == "segmentation"
    with pytest.raises(DataError, match="--task segmentation"):
        open_dataset(tmp_path / "c.npz", task="segmentation")


@pytest.mark.parametrize("y,msg", [
    (np.zeros((4, 2)), "labels must be integers"),
    (np.zeros((4, 2), np.int64), "fits no task"),
    (np.zeros(3, np.int64), "x has 4 samples but y has 3"),
    (np.zeros((4, 5, 5), np.int64), "images are"),
])
def test_bad_npz_is_a_one_line_error(tmp_path, y, msg):
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 1, 6, 6), np.float32), y=y)
    with pytest.raises(DataError, match=msg) as exc:
        open_dataset(tmp_path / "b.npz")
    assert "\n" not in str(exc.value)


def test_missing_arrays_and_files(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros(3))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        open_dataset(tmp_path / "a.npz")
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(DataError, match="cannot read"):
        open_dataset(tmp_path / "junk.npz")


def test_image_folder_uses_the_shared_preprocessing(tmp_path):
    for c, value in (("cat", 10), ("dog", 200)):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 7, 3), value + i, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    pre = Preprocess(size=(4, 4), mean=(10.0, 10.0, 10.0), std=(2.0, 2.0, 2.0), channel_order="bgr")
    data = open_dataset(tmp_path, pre=pre)
    assert len(data) == 4 and data.classes == ["cat", "dog"] and data.num_classes == 2
    x, y = data.batch(np.array([1, 2]))
    assert x.shape == (2, 3, 4, 4) and y.tolist() == [0, 1]
    assert np.allclose(x[0], (11 - 10) / 2) and np.allclose(x[1], (200 - 10) / 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        open_dataset(empty)
