"""`make demo`'s recipe meets issue 6's bar: >= 80% conv zeros, power-of-two int8, within 1.5 points of dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxsq import runtime

RECIPE = Path(__file__).resolve().parents[2] / "sample_models" / "recipes" / "digits.toml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not runtime.has_training(), reason="the digits flow trains: needs onnxruntime-training"),
]


def test_digits_demo_recipe_end_to_end(tmp_path):
    pytest.importorskip("sklearn")
    from onnxsq.pipeline import run_pipeline

    result = run_pipeline(RECIPE, tmp_path / "work")
    rows = {r.stage.split("-", 1)[1]: r for r in result.rows}
    dense = max(rows["l2"].metric, rows["l1"].metric)
    final = result.rows[-1]
    assert final.kind == "quantize"
    assert final.conv_zeros / final.conv_params >= 0.80
    assert final.int8_macs == final.macs > 0
    assert final.metric >= dense - 1.5, (final.metric, dense)
    q = onnx.load(str(tmp_path / "work" / final.model))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    scales = [inits[n.input[1]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales
    for scale in scales:  # every QDQ scale is an exact power of two
        mant, _ = np.frexp(scale.astype(np.float64))
        assert np.all(mant == 0.5)
