"""fold-forward: a constant scale/shift chain before Conv layers goes into them, exactly (onnxruntime,
explicit tolerances), the shift into the bias only where no padding reads it; refused chains say why;
quantize runs it (one rounding less per block)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import Builder, assert_equivalent, feeds_for, ops, run

from onnxsq.passes.fold_forward import fold_forward

C = 8


def _block(b: Builder, *, chain=(("Mul", 0.63), ("Add", 0.147)), kernel: int = 1, pads: int = 0, group: int = 1,
           cout: int = 6, readers: int = 1, bias: bool = True) -> tuple[str, list[str]]:
    """x → Conv(3→C) → HardSwish → chain → ``readers`` Conv(C→cout, kernel, pads, group): (input, outputs)."""
    h = b.node("HardSwish", [b.conv("x", 3, C)])
    y = h
    for op, value in chain:
        y = b.const_op(op, y, value)
    outs = []
    for _ in range(readers):
        w = b.const("w", b.weight((cout, C // group, kernel, kernel), C // group * kernel**2))
        ins = [y, w] + ([b.const("b", b.rng.normal(0, 1, cout))] if bias else [])
        outs.append(b.node("Conv", ins, group=group, kernel_shape=[kernel, kernel], pads=[pads] * 4))
    return y, outs


def _model(**kw) -> onnx.ModelProto:
    b = Builder(seed=3)
    _, outs = _block(b, **kw)
    return b.model({"x": [2, 3, 7, 9]}, outs, opset=14)


def _folded(model: onnx.ModelProto):
    result, report = fold_forward(model)
    onnx.checker.check_model(result, full_check=True)
    assert_equivalent(model, result, feeds_for([2, 3, 7, 9]))  # rtol 1e-4, atol 1e-5 (float32)
    return result, report


@pytest.mark.parametrize("bias", [True, False])
def test_a_learnable_affine_block_before_a_1x1_conv_folds_away(bias):
    model = _model(bias=bias)
    result, report = _folded(model)
    assert ops(result) == ["Conv", "HardSwish", "Conv"]  # Mul and Add gone: the Conv reads HardSwish
    (cand,) = report.candidates
    assert cand.action == "folded" and cand.details["shift"] == "bias" and cand.op == "Mul→Add"
    assert report.summary == {"chains": 1, "folded": 1}


@pytest.mark.parametrize("group", [1, C])  # depthwise too
def test_before_a_padded_conv_the_shift_stays_as_one_add(group):
    model = _model(kernel=3, pads=1, group=group, cout=C)
    result, report = _folded(model)
    assert ops(result) == ["Conv", "HardSwish", "Add", "Conv"]
    (cand,) = report.candidates
    assert cand.details["shift"] == "kept" and "padded" in cand.reason
    shift = [i for i in result.graph.initializer if i.name.endswith("_shift")]
    assert len(shift) == 1 and onnx.numpy_helper.to_array(shift[0]).shape == ()  # b / a, a scalar
    np.testing.assert_allclose(onnx.numpy_helper.to_array(shift[0]), 0.147 / 0.63, rtol=1e-6)


def test_channel_shaped_constants_sub_and_div_on_a_grouped_conv():
    chain = (("Div", np.full((C, 1, 1), 1.7)), ("Sub", np.full((C, 1, 1), 0.4)), ("Mul", np.full((1, C, 1, 1), -1.3)))
    result, report = _folded(_model(chain=chain, group=2))
    assert ops(result) == ["Conv", "HardSwish", "Conv"]
    assert report.candidates[0].op == "Div→Sub→Mul"


def test_a_per_channel_scale_or_shift_is_refused():
    rng = np.random.default_rng(5)  # a BatchNorm after an activation: its ranges per channel are what it is for
    assert "per-channel" in _refused(_model(chain=(("Mul", rng.uniform(0.5, 2, (C, 1, 1))),)))
    assert "per-channel" in _refused(_model(chain=(("Mul", 0.5), ("Add", rng.normal(0, 1, (C, 1, 1))))))


def test_two_readers_one_padded_share_the_kept_shift():
    b = Builder(seed=4)
    y, outs = _block(b)  # a 1x1 reader
    w = b.const("w", b.weight((5, C, 3, 3), C * 9))
    outs.append(b.node("Conv", [y, w], kernel_shape=[3, 3], pads=[1] * 4))
    model = b.model({"x": [2, 3, 7, 9]}, outs, opset=14)
    result, report = _folded(model)
    assert ops(result).count("Add") == 1 and "Mul" not in ops(result)
    assert len(report.candidates[0].details["into"]) == 2


def _refused(model: onnx.ModelProto) -> str:
    result, report = fold_forward(model)
    (cand,) = report.candidates
    assert cand.action == "skipped"
    np.testing.assert_array_equal(run(result, feeds_for([2, 3, 7, 9]))[0], run(model, feeds_for([2, 3, 7, 9]))[0])
    return cand.reason


def test_refused_chains_say_why():
    b = Builder(seed=6)  # also read by a Relu
    y, outs = _block(b)
    model = b.model({"x": [2, 3, 7, 9]}, [*outs, b.node("Relu", [y])], opset=14)
    assert "not only by Conv" in _refused(model)
    b = Builder(seed=6)  # a graph output
    y, outs = _block(b)
    assert "graph output" in _refused(b.model({"x": [2, 3, 7, 9]}, [*outs, y], opset=14))
    assert "zero scale" in _refused(_model(chain=(("Mul", 0.0), ("Add", 0.3)), kernel=3, pads=1))
    assert "nothing to fold" in _refused(_model(chain=(("Add", 0.3),), kernel=3, pads=1))


def _width_model() -> onnx.ModelProto:
    b = Builder(seed=7)
    h = b.node("HardSwish", [b.conv("x", 3, C)])
    y = b.const_op("Mul", h, np.linspace(0.5, 1.5, C))  # shape [C] against [N, C, H, W=C]: along W
    w = b.const("w", b.weight((4, C, 1, 1), C))
    return b.model({"x": [2, 3, 7, C]}, [b.node("Conv", [y, w], kernel_shape=[1, 1])], opset=14)


def test_a_constant_along_the_width_is_refused():
    model = _width_model()
    result, report = fold_forward(model)
    (cand,) = report.candidates
    assert cand.action == "skipped" and "not per-channel" in cand.reason
    x = feeds_for([2, 3, 7, C])
    np.testing.assert_array_equal(run(result, x)[0], run(model, x)[0])


def test_a_matmul_reader_is_refused_with_the_measurement():
    b = Builder(seed=8)
    y = b.const_op("Add", b.const_op("Mul", b.node("Relu", ["x"]), np.linspace(0.5, 1.5, 6)), np.ones(6))
    out = b.node("MatMul", [y, b.const("w", b.weight((6, 4), 6))])
    result, report = fold_forward(b.model({"x": [3, 6]}, [out]))
    (cand,) = report.candidates
    assert cand.action == "skipped" and "MatMul" in cand.reason and "dB" in cand.reason
    assert ops(result) == ["Relu", "Mul", "Add", "MatMul"]


def _spelled_out(chain) -> onnx.ModelProto:
    """Conv → x * relu6(x + 3) → chain → Conv 1x1: a HardSwish spelled out, as PP-OCRv4's exporter writes it."""
    b = Builder(seed=9)
    x = b.conv("x", 3, C)
    gate = b.node("Clip", [b.const_op("Add", x, 3.0), b.const("lo", 0.0), b.const("hi", 6.0)])
    y = b.node("Mul", [x, gate])
    for op, value in chain:
        y = b.const_op(op, y, value)
    w = b.const("w", b.weight((4, C, 1, 1), C))
    return b.model({"x": [2, 3, 7, 9]}, [b.node("Conv", [y, w], kernel_shape=[1, 1])], opset=14)


def test_a_spelled_out_hardswish_keeps_its_division():
    assert "spelled-out" in _refused(_spelled_out((("Div", 6.0),)))
    model = _spelled_out((("Div", 6.0), ("Mul", 0.48), ("Add", -0.2)))
    result, report = _folded(model)
    (cand,) = report.candidates
    assert cand.action == "folded" and cand.op == "Mul→Add"  # the chain after the / 6
    assert ops(result)[-2:] == ["Div", "Conv"]


def test_quantize_folds_the_block_and_rounds_it_once():
    from onnxsq.passes.quantize import QuantizeConfig, quantize

    model = _model(chain=(("Mul", 0.63), ("Add", 0.147)))  # before a 1x1 Conv: the chain folds away
    rng = np.random.default_rng(2)
    calib = [{"x": rng.normal(0, 1, (2, 3, 7, 9)).astype(np.float32)} for _ in range(6)]
    # (without the offset lift, which fold_forward gates: its Add would land where the folded one was; without
    # scale alignment, whose factors land on other tensors in the two graphs)
    on, rep_on = quantize(model, iter(calib), config=QuantizeConfig(report_samples=2, offset_outputs=False,
                                                                     align_scales=False))
    off, rep_off = quantize(model, iter(calib), config=QuantizeConfig(report_samples=2, fold_forward=False,
                                                                      align_scales=False))
    onnx.checker.check_model(on)
    assert rep_on.summary["forward_folded"] == 1 and "forward_folded" not in rep_off.summary

    def points(q):  # activation quantization points, their scales and zero points
        init = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
        return [(init[n.input[1]], init[n.input[2]]) for n in q.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in init]

    # folded: the HardSwish output only; unfolded, the Add after the float Mul stays float as well (a float
    # island, placement_tail): the same count; the folded model still scores higher
    assert len(points(on)) == len(points(off))
    assert "Add" not in [n.op_type for n in on.graph.node] and "Add" in [n.op_type for n in off.graph.node]
    for scale, zero in points(on):
        assert np.all(np.exp2(np.round(np.log2(scale))) == scale) and np.all(zero == 0)
    assert rep_on.summary["output_sqnr_db"] > rep_off.summary["output_sqnr_db"]


def _squeeze_excite(square: bool = False) -> onnx.ModelProto:
    """HardSwish → Mul → Add → (GlobalAveragePool → Conv → Relu → Conv → HardSigmoid) gate → Mul → Conv 1x1:
    PP-LCNetV3's block before its squeeze-excitation (``square``: the Mul multiplies the tensor with itself)."""
    b = Builder(seed=10)
    h = b.node("HardSwish", [b.conv("x", 3, C)])
    y = b.const_op("Add", b.const_op("Mul", h, 0.55), 0.21)
    pooled = b.node("GlobalAveragePool", [y])
    w1, w2 = b.const("w", b.weight((4, C, 1, 1), C)), b.const("w", b.weight((C, 4, 1, 1), 4))
    squeezed = b.node("Relu", [b.node("Conv", [pooled, w1, b.const("b", np.zeros(4))], kernel_shape=[1, 1])])
    gate = b.node("HardSigmoid", [b.node("Conv", [squeezed, w2], kernel_shape=[1, 1])])
    scaled = b.node("Mul", [y, y if square else gate])
    w3 = b.const("w", b.weight((5, C, 1, 1), C))
    return b.model({"x": [2, 3, 7, 9]}, [b.node("Conv", [scaled, w3], kernel_shape=[1, 1])], opset=14)


def test_the_scale_passes_through_a_squeeze_excitation_to_its_convs():
    model = _squeeze_excite()
    result, report = _folded(model)
    (cand,) = report.candidates
    assert cand.action == "folded" and cand.details["shift"] == "kept" and len(cand.details["into"]) == 2
    assert len(cand.details["through"]) == 2 and "read through GlobalAveragePool, Mul" in cand.reason
    assert ops(result).count("Add") == 1 and ops(result).count("Mul") == 1  # the gate's Mul; the scale is gone
    assert "itself" in _refused(_squeeze_excite(square=True))
