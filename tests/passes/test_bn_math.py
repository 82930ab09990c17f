"""bn_math: scaling weights per output channel is computed in float64 and rounded once."""

from __future__ import annotations

import numpy as np
import pytest

from onnxsq.passes.fold_batchnorm import bn_math as bm


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_scaled_weights_equal_float64_then_cast(dtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 4, 3, 3)).astype(dtype)
    s = rng.standard_normal(16) * 3
    want = (w.astype(np.float64) * s.reshape(-1, 1, 1, 1)).astype(dtype)
    got = bm.scale_conv_weight(w, s, dtype)
    assert got.dtype == dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))

    wt = rng.standard_normal((8, 6, 3, 3)).astype(dtype)  # ConvTranspose, group 2: 12 output channels
    st = rng.standard_normal(12)
    want = (wt.astype(np.float64).reshape(2, 4, 6, 3, 3) * st.reshape(2, 1, 6, 1, 1)).reshape(wt.shape).astype(dtype)
    assert np.array_equal(bm.scale_convtranspose_weight(wt, st, 2, dtype), want)

    g = rng.standard_normal((5, 7)).astype(dtype)
    c = rng.standard_normal(7)
    assert np.array_equal(bm.scale_matrix_columns(g, c, False, dtype), (g.astype(np.float64) * c).astype(dtype))
    r = rng.standard_normal(5)
    assert np.array_equal(bm.scale_matrix_columns(g, r, True, dtype),
                          (g.astype(np.float64) * r[:, None]).astype(dtype))


def test_default_result_is_float64():
    w = np.ones((2, 1, 1, 1), np.float32)
    assert bm.scale_conv_weight(w, np.array([0.1, 0.2])).dtype == np.float64
