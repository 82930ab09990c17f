"""Summary numbers: MACs per layer and the int8 share on hand-built QDQ models, counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.pipeline.macs import count_macs
from onnxsq.pipeline.summary import metric_of, model_row, table_rows, to_markdown, write_summary


def _model(nodes, inits, inputs, outputs, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def qdq_model(weight_type=TensorProto.INT8) -> onnx.ModelProto:
    """x 1×2×5×5 → Q/DQ → Conv(4, 3×3, no pad; weight through DQ, 6 of 72 zero) → Flatten → Gemm(36→10, float).

    By hand: Conv: output 4×3×3 = 36 values, each 2·3·3 = 18 MACs → 648; Gemm: 10 outputs × K 36 = 360.
    int8 share = 648 / 1008.
    """
    np_type = {TensorProto.INT8: np.int8, TensorProto.INT16: np.int16}[weight_type]
    wq = np.arange(72).reshape(4, 2, 3, 3) % 7 - 3  # values -3..3
    wq[0, 0, 0, :] = 0
    wq[1, 1, 2, :] = 0  # 6 exact zeros, plus the (arange % 7 == 3) ones
    zeros = int(np.count_nonzero(wq == 0))
    inits = [
        numpy_helper.from_array(wq.astype(np_type), "w_q"),
        numpy_helper.from_array(np.array(0.125, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np_type), "w_zp"),
        numpy_helper.from_array(np.array(0.0625, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
        numpy_helper.from_array(np.ones((36, 10), np.float32), "fc.weight"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w"),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["y"], name="fc"),
    ]
    m = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
               opset=21 if weight_type == TensorProto.INT16 else 13)
    m.ir_version = 10 if weight_type == TensorProto.INT16 else 7
    m.doc_string = str(zeros)
    return m


def test_mac_share_counted_by_hand():
    macs = count_macs(qdq_model())
    by = {layer.name: layer for layer in macs.layers}
    assert by["conv"].macs == 648 and by["conv"].int8
    assert by["fc"].macs == 360 and not by["fc"].int8
    assert "does not come from DequantizeLinear" in by["fc"].reason
    assert macs.total == 1008 and macs.int8 == 648
    assert macs.int8_share == pytest.approx(648 / 1008)


def test_wider_than_8_bits_is_not_int8():
    pytest.importorskip("onnx", minversion="1.15")
    macs = count_macs(qdq_model(TensorProto.INT16))
    conv = next(layer for layer in macs.layers if layer.name == "conv")
    assert conv.macs == 648 and not conv.int8 and "INT16" in conv.reason


def test_convtranspose_grouped_conv_and_matmul_by_hand():
    # x 1×4×3×3 → ConvTranspose(W 4×2×2×2, stride 2, group 1) → 1×2×6×6: each of 36 inputs × 2·2·2 = 288
    # → Conv(W 4×1×3×3, group 2, pad 1) → 1×4×6×6: 144 outputs × 1·3·3 = 1296
    # → Reshape 1×4×36 → MatMul(36×5) → 1×4×5: 20 outputs × K 36 = 720
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("wt", (4, 2, 2, 2)), ("wc", (4, 1, 3, 3)), ("wm", (36, 5)))]
    inits.append(numpy_helper.from_array(np.array([1, 4, 36], np.int64), "shape"))
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["t"], name="up", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["t", "wc"], ["c"], name="gconv", kernel_shape=[3, 3], pads=[1] * 4, group=2),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "wm"], ["y"], name="mm"),
    ]
    m = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5])])
    macs = {layer.name: layer.macs for layer in count_macs(m).layers}
    assert macs == {"up": 288, "gconv": 1296, "mm": 720}
    assert count_macs(m).int8_share == 0.0


def test_dynamic_spatial_size_is_unknown_not_guessed():
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])], [w],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "OH", "OW"])])
    macs = count_macs(m)
    assert macs.layers[0].macs is None and macs.unknown == ["conv"] and macs.int8_share is None


def test_row_markdown_and_json(tmp_path: Path):
    m = qdq_model()
    path = tmp_path / "03-quantize.onnx"
    path.write_bytes(m.SerializeToString())
    row = model_row("03-quantize", "quantize", "ran", m, path)
    zeros = int(m.doc_string)
    assert (row.conv_zeros, row.conv_params) == (zeros, 72)  # read through the DequantizeLinear
    assert row.conv_sparsity == pytest.approx(zeros / 72)
    assert row.size_bytes == path.stat().st_size
    assert (row.macs, row.int8_macs) == (1008, 648)
    row.metric_name, row.metric = metric_of({"top1": 0.9567, "samples": 10})
    row.seconds = 1.25
    cols, cells = table_rows([row])
    assert cols == ["stage", "status", "accuracy", "conv zeros", "size", "int8 MACs"]
    assert cells[0] == ["03-quantize", "ran 1.2s", "95.67", f"{100 * zeros / 72:.1f}%",
                        f"{path.stat().st_size / 1024:.1f} KiB", f"{100 * 648 / 1008:.1f}%"]
    assert to_markdown([row]).startswith("| stage | status | accuracy | conv zeros | size | int8 MACs | MACs |\n")
    files = write_summary([row], tmp_path, recipe="r.toml")
    md = files["markdown"].read_text()
    assert "| 03-quantize | ran 1.2s | 95.67 |" in md and "1.01k" in md
    data = json.loads(files["json"].read_text())
    assert data["stages"][0]["int8_share"] == pytest.approx(648 / 1008)
    assert data["stages"][0]["layer_sparsity"] == {"conv": pytest.approx(zeros / 72)}


def test_metric_prefers_miou_for_segmentation():
    assert metric_of({"pixel_accuracy": 0.9, "mean_iou": 0.8, "per_class_iou": [0.7]}) == ("mIoU", 0.8)
    assert metric_of({"top1": 0.5, "top5": 0.9}) == ("accuracy", 0.5)
    assert metric_of({"mean_iou": float("nan")})[0] == "mIoU"
    assert metric_of({}) == (None, None)
