"""``onnxsq quantize --int16 / --promote``: 16-bit layers through the CLI, the input untouched, a flag that
does nothing warned about by name."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxsq.model_io import default_opset


def test_int16_layer_through_the_cli(run_cli, model_and_data, tmp_path, untouched):
    model, data = model_and_data
    untouched(model)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--report", report, "--int16", "conv*")
    assert res.code == 0, res.err
    q = onnx.load(str(out))
    onnx.checker.check_model(q)
    assert default_opset(q) == 21
    kinds = {onnx.helper.tensor_dtype_to_np_dtype(i.data_type) for i in q.graph.initializer
             if i.name.endswith("_quantized")}
    assert np.dtype(np.int16) in kinds
    assert json.loads(report.read_text())["summary"]["int16_tensors"]


def test_promote_without_a_target_and_an_unmatched_pattern_are_named(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    out = tmp_path / "q.onnx"
    res = run_cli("quantize", model, "--calib", data, "-o", out, "--promote", "int16", "--int16", "nosuch")
    assert res.code == 0, res.err
    text = res.out + res.err
    assert "--promote int16: ignored without --target-sqnr" in text
    assert "--int16 'nosuch' matches no node or tensor" in text
    assert default_opset(onnx.load(str(out))) == 13  # nothing to widen: the opset stays


def test_unknown_promotion_is_a_one_line_error(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", "--promote", "int4")
    assert res.code != 0 and "Traceback" not in res.err and "--promote" in res.err
