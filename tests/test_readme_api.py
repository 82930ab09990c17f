"""The README's deployment script, run for real on a sample model (so the documented API stays true)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxsq
from onnxsq.passes.quantize import QuantizeConfig

pytest.importorskip("onnxruntime")


def test_readme_deployment_flow(tmp_path, sample_model):
    src = sample_model("small_cls_torch")
    exported = tmp_path / "exported.onnx"
    exported.write_bytes(src.read_bytes())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", rng.standard_normal((16, 3, 32, 32)).astype(np.float32))

    model = onnxsq.load_model(exported)
    model, rep = onnxsq.fold_batchnorm(model, verify=True)
    assert rep.summary["verified"] is True
    model, rep = onnxsq.threshold(model, fraction_mid=0.8, channelwise=True)
    assert rep.pass_name == "threshold"
    model, rep = onnxsq.quantize(model, tmp_path / "calib.npz", config=QuantizeConfig(per_channel=True))
    assert any(c.action == "quantized" for c in rep.candidates)
    out = onnxsq.save_model(model, tmp_path / "deploy.onnx")
    onnx.checker.check_model(onnx.load(str(out)))
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    # int8 + thresholding changes the logits but must keep them close to the float model's
    res = onnxsq.compare_models(str(exported), str(out), atol=1.0, rtol=0.5)
    assert res.max_abs < 1.0
    assert exported.read_bytes() == src.read_bytes()
