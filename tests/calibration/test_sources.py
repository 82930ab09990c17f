"""Calibration sources: image / .npy / .npz folders, one .npz, module.py:function; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxsq.calibration.sources import batches, open_source
from onnxsq.data.images import Preprocess
from onnxsq.errors import DataError


def _images(folder, n=3, size=(10, 12), mode="RGB"):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (*size, 3) if mode == "RGB" else size
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")
    return folder


def test_image_folder_uses_the_models_static_size_and_preprocess(conv_model, tmp_path):
    model = conv_model(hw=8)
    src = open_source(_images(tmp_path / "imgs"), model, preprocess=Preprocess(mean=(128, 128, 128),
                                                                               std=(64, 64, 64)))
    feeds = list(src)
    assert len(feeds) == 3 and src.total == 3
    x = feeds[0]["input"]
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32 and -2.1 < x.min() and x.max() < 2.1


def test_grayscale_model_and_nhwc(conv_model, tmp_path):
    model = conv_model(cin=1, hw=6)
    feeds = list(open_source(_images(tmp_path / "imgs"), model))
    assert feeds[0]["input"].shape == (1, 1, 6, 6)


def test_dynamic_size_defaults_to_224_and_size_sets_it(conv_model, tmp_path, caplog):
    model = conv_model(hw=8)
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "H"
    with caplog.at_level("INFO", logger="onnxsq"):
        feeds = list(open_source(_images(tmp_path / "imgs"), model))
    assert feeds[0]["input"].shape == (1, 3, 224, 224)  # as the CLI: a size real vision models take
    assert "dynamic size" in caplog.text and "--size" in caplog.text
    feeds = list(open_source(tmp_path / "imgs", model, preprocess=Preprocess(size=(5, 7))))
    assert feeds[0]["input"].shape == (1, 3, 5, 7)


def test_one_unreadable_image_is_skipped_with_a_warning(conv_model, tmp_path):
    folder = _images(tmp_path / "imgs")
    (folder / "broken.jpg").write_bytes(b"not an image")
    src = open_source(folder, conv_model())
    assert len(list(src)) == 3
    assert len(src.warnings) == 1 and "broken.jpg" in src.warnings[0]


def test_all_unreadable_is_an_error(conv_model, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no usable calibration sample"):
        list(open_source(tmp_path / "imgs", conv_model()))


def test_npy_and_npz_folders_and_single_npz(conv_model, tmp_path):
    model = conv_model()
    rng = np.random.default_rng(0)
    (tmp_path / "t").mkdir()
    np.save(tmp_path / "t" / "a.npy", rng.standard_normal((3, 8, 8)).astype(np.float32))  # no batch axis
    np.savez(tmp_path / "t" / "b.npz", input=rng.standard_normal((2, 3, 8, 8)))  # float64, batch of 2
    feeds = list(open_source(tmp_path / "t", model))
    assert [f["input"].shape for f in feeds] == [(1, 3, 8, 8), (2, 3, 8, 8)]
    assert all(f["input"].dtype == np.float32 for f in feeds)
    np.savez(tmp_path / "all.npz", rng.standard_normal((5, 3, 8, 8)).astype(np.float32))  # a lone array
    feeds = list(open_source(tmp_path / "all.npz", model))
    assert len(feeds) == 5
    got = list(batches(feeds, open_source(tmp_path / "all.npz", model).inputs, batch_size=2, count=5))
    assert [n for _, n in got] == [2, 2, 1]
    assert [n for _, n in batches(feeds, open_source(tmp_path / "all.npz", model).inputs, count=3)] == [1, 1, 1]


def test_function_source(conv_model, tmp_path):
    script = tmp_path / "calib_data.py"
    script.write_text("import numpy as np\n"
                      "def feeds():\n"
                      "    for i in range(4):\n"
                      "        yield {'input': np.full((1, 3, 8, 8), i, np.float32)}\n"
                      "def broken():\n"
                      "    raise RuntimeError('no data today')\n")
    feeds = list(open_source(f"{script}:feeds", conv_model()))
    assert len(feeds) == 4 and feeds[3]["input"][0, 0, 0, 0] == 3
    with pytest.raises(DataError, match="no data today"):
        list(open_source(f"{script}:broken", conv_model()))
    with pytest.raises(DataError, match="no function 'nope'"):
        open_source(f"{script}:nope", conv_model())


@pytest.mark.parametrize("case, match", [
    ("wrong_channels", r"bad\.npy.*channels: 4 vs 3"),
    ("wrong_keys", r"bad\.npz.*match no model input"),
    ("wrong_rank", r"bad\.npy.*rank 4"),
    ("empty", "no images"),
    ("missing", "no such file"),
    ("not_npz", "must be a .npz"),
    ("corrupt_npz", r"bad\.npz: cannot read"),
])
def test_bad_input_is_a_one_line_error_naming_the_file(conv_model, tmp_path, case, match):
    model = conv_model()
    folder = tmp_path / "d"
    folder.mkdir()
    target = folder
    if case == "wrong_channels":
        np.save(folder / "bad.npy", np.zeros((1, 4, 8, 8), np.float32))
    elif case == "wrong_keys":
        np.savez(folder / "bad.npz", x=np.zeros((1, 3, 8, 8)), y=np.zeros(3))
    elif case == "wrong_rank":
        np.save(folder / "bad.npy", np.zeros((8, 8), np.float32))
    elif case == "missing":
        target = tmp_path / "nowhere"
    elif case == "not_npz":
        target = tmp_path / "x.txt"
        target.write_text("hi")
    elif case == "corrupt_npz":
        (folder / "bad.npz").write_bytes(b"PK garbage")
    with pytest.raises(DataError, match=match) as info:
        list(open_source(target, model))
    assert "\n" not in str(info.value)


def test_images_for_a_model_wanting_four_channels(conv_model, tmp_path):
    with pytest.raises(DataError, match="wants 4 channels"):
        open_source(_images(tmp_path / "imgs"), conv_model(cin=4))


def test_a_static_batch_takes_whole_batches_and_warns_of_the_rest(caplog):
    from onnxsq.calibration.sources import InputSpec

    inputs = [InputSpec("x", np.dtype(np.float32), (3, 2))]  # the model's batch is fixed at 3
    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(7)]
    with caplog.at_level("WARNING", logger="onnxsq"):
        got = [f["x"][:, 0].tolist() for f, _ in batches(feeds, inputs)]
    assert got == [[0, 1, 2], [3, 4, 5]]
    assert "dropping the last 1 calibration sample(s): the model's batch is fixed at 3" in caplog.text
