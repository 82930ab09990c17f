"""Random crops of image inputs (onnxsq.data.crops): numpy oracles on shapes real inputs have."""

from __future__ import annotations

import numpy as np
import pytest

from onnxsq.data.crops import _bilinear, crops, image_input, spatial_axes, with_crops


@pytest.mark.parametrize(("shape", "dtype", "want"), [
    ((1, 3, 8, 10), np.float32, (2, 3)), ((2, 1, 5, 7), np.float32, (2, 3)), ((1, 8, 10, 3), np.float32, (1, 2)),
    ((1, 8, 10, 4), np.float32, (1, 2)), ((1, 3, 8, 10), np.float16, None), ((1, 3, 8, 10), np.float64, None),
    ((1, 5, 8, 10), np.float32, None), ((3, 8, 10), np.float32, None), ((), np.float32, None),
    ((1, 3, 0, 10), np.float32, None), ((1, 1, 1, 1), np.float32, (2, 3)),
])
def test_what_counts_as_an_image(shape, dtype, want):
    assert spatial_axes(np.zeros(shape, dtype)) == want


def test_the_whole_box_is_the_image_itself_and_a_crop_is_bilinear():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 9)).astype(np.float32)
    np.testing.assert_array_equal(_bilinear(x, (2, 3), (0, 0, 6, 9)), x)
    # a ramp along W stays a ramp over the crop's columns: pixel centres map linearly into the box
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32), (1, 1, 4, 8)).copy()
    out = _bilinear(ramp, (2, 3), (0, 2, 4, 4))  # columns 2..5 stretched to 8
    want = np.clip(2 + (np.arange(8) + 0.5) * 4 / 8 - 0.5, 2, 5)
    np.testing.assert_allclose(out[0, 0, 0], want, rtol=0, atol=1e-6)
    assert out.shape == ramp.shape and out.dtype == np.float32
    const = np.full((1, 5, 7, 3), 0.25, np.float32)  # NHWC
    np.testing.assert_array_equal(_bilinear(const, (1, 2), (1, 2, 4, 3)), const)


def test_with_crops_keeps_the_originals_first_and_is_seeded():
    rng = np.random.default_rng(1)
    feeds = [{"ids": np.arange(4, dtype=np.int64), "img": rng.random((1, 3, 12, 16), dtype=np.float32)}
             for _ in range(3)]
    out = with_crops(feeds, 2, seed=7)
    assert len(out) == 9 and all(out[i]["img"] is feeds[i]["img"] for i in range(3))
    assert all(o["img"].shape == (1, 3, 12, 16) and o["ids"] is feeds[0]["ids"] for o in out[3:4])
    assert not any(np.array_equal(o["img"], f["img"]) for o in out[3:] for f in feeds)  # crops, not copies
    again = with_crops(feeds, 2, seed=7)
    assert all(np.array_equal(a["img"], b["img"]) for a, b in zip(out, again))
    other = with_crops(feeds, 2, seed=8)
    assert not np.array_equal(other[3]["img"], out[3]["img"])
    # each crop's values come from inside its own image: bilinear weights are convex
    for k, o in enumerate(out[3:]):
        src = feeds[k // 2]["img"]
        assert src.min() - 1e-6 <= o["img"].min() and o["img"].max() <= src.max() + 1e-6
    assert image_input(feeds[0]) == "img" and crops(feeds, "ids", 2, 0) == [dict(f) for f in feeds]


@pytest.mark.parametrize("feeds", [[{"x": np.zeros((1, 10), np.float32)}], [{"x": np.zeros((1, 3, 0, 4), np.float32)}],
                                   [], [{"x": np.ones((1, 1, 1, 1), np.float32)}]])
def test_feeds_without_a_croppable_image_come_back_as_they_are(feeds):
    out = with_crops(feeds, 3, seed=0)
    if feeds and spatial_axes(np.asarray(feeds[0]["x"])) is not None:  # a 1x1 image: its crops are itself
        assert len(out) == 4 and all(np.array_equal(o["x"], feeds[0]["x"]) for o in out)
    else:
        assert out == [dict(f) for f in feeds]
    assert with_crops(feeds, 0, seed=0) == [dict(f) for f in feeds]
