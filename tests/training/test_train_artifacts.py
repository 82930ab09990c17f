"""The training graph: rewrites (exact), parameter roles, the L1 loss block against numpy."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import cnn
from onnx import TensorProto, helper, numpy_helper
from train_helpers import needs_training, values

from onnxsq.errors import UnsupportedModelError
from onnxsq.runtime import make_session
from onnxsq.training.artifacts import build_training_graph, classify_params


def _decoder(kind: str, opset: int = 13, **attrs) -> onnx.ModelProto:
    """Conv(3→4) → ConvTranspose or Resize; input N×3×5×6 (odd sizes catch off-by-one errors)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.weight")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if kind == "deconv":
        g, k, s = attrs.get("group", 2), attrs.get("k", 3), attrs.get("s", 2)
        inits += [numpy_helper.from_array(rng.standard_normal((4, 6 // g, k, k)).astype(np.float32), "up.weight"),
                  numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "up.bias")]
        nodes.append(helper.make_node("ConvTranspose", ["c", "up.weight", "up.bias"], ["y"], name="up", group=g,
                                      strides=[s, s], pads=attrs.get("pads", [1, 1, 1, 1]),
                                      output_padding=attrs.get("op", [1, 1])))
    else:
        inits += [numpy_helper.from_array(np.zeros(0, np.float32), "roi")]
        if "sizes" in attrs:
            inits.append(numpy_helper.from_array(np.array(attrs.pop("sizes"), np.int64), "sizes"))
            ins = ["c", "roi", "", "sizes"]
        else:
            inits.append(numpy_helper.from_array(np.array([1, 1, *attrs.pop("scales")], np.float32), "scales"))
            ins = ["c", "roi", "scales"]
        nodes.append(helper.make_node("Resize", ins, ["y"], name="up", **attrs))
    graph = helper.make_graph(nodes, "dec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


CASES = [  # ConvTranspose: the sub-pixel form (static height and width)
    ("deconv", {"group": 2, "k": 3, "s": 2, "pads": [1, 1, 1, 1], "op": [1, 1]}),
    ("deconv", {"group": 1, "k": 4, "s": 2, "pads": [1, 1, 1, 1], "op": [0, 0]}),
    ("deconv", {"group": 2, "k": 2, "s": 2, "pads": [0, 0, 0, 0], "op": [0, 0]}),
    ("deconv", {"group": 1, "k": 3, "s": 1, "pads": [1, 0, 1, 2], "op": [0, 0]}),
    ("deconv", {"group": 1, "k": 1, "s": 2, "pads": [0, 0, 0, 0], "op": [0, 0]}),  # taps on no input: zeros
    ("deconv", {"group": 2, "k": 4, "s": 2, "pads": [0, 0, 0, 0], "op": [1, 0]}),  # output padding past the kernel
    ("deconv", {"group": 1, "k": 5, "s": 3, "pads": [2, 1, 0, 2], "op": [2, 1]}),
    ("resize", {"mode": "linear", "scales": [2.0, 2.0]}),
    ("resize", {"mode": "linear", "coordinate_transformation_mode": "align_corners", "scales": [3.0, 2.0]}),
    ("resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor",
                "scales": [2.0, 4.0]}),
    ("resize", {"mode": "cubic", "scales": [2.0, 1.5]}),
]


@pytest.mark.parametrize("kind,attrs", CASES)
def test_rewrites_compute_the_same_function(kind, attrs):
    model = _decoder(kind, **dict(attrs))
    graph = build_training_graph(model)
    assert [op for _, op, how in graph.rewrites if not how.startswith("kept")] == [
        "ConvTranspose" if kind == "deconv" else "Resize"]
    assert all(n.op_type not in ("ConvTranspose", "Resize") for n in graph.model.graph.node)
    if kind == "deconv":
        assert "sub-pixel" in graph.rewrites[0][2]
        assert not any(n.op_type in ("Mul", "Expand") for n in graph.model.graph.node)  # no zero insertion
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    ref = make_session(model).run(None, {"x": x})[0]
    got = make_session(graph.model).run(None, {"x": x})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the trained tensors keep their names and layouts
    assert "up.weight" in graph.trainable or kind == "resize"
    assert "conv.weight" in graph.trainable


@pytest.mark.parametrize(("kernel", "strides", "pads", "op"), [
    ((3, 2), (2, 1), [1, 0, 0, 1], [1, 0]), ((1, 4), (3, 2), [0, 1, 0, 1], [2, 1]),
    ((4, 3), (1, 3), [2, 1, 1, 0], [0, 2])])
def test_subpixel_deconv_with_unequal_axes(kernel, strides, pads, op):
    model = _decoder("deconv", group=2, k=3, s=2, pads=pads, op=op)
    up = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    next(a for a in up.attribute if a.name == "strides").ints[:] = strides
    w = np.random.default_rng(2).standard_normal((4, 3, *kernel)).astype(np.float32)
    next(i for i in model.graph.initializer if i.name == "up.weight").CopyFrom(numpy_helper.from_array(w, "up.weight"))
    graph = build_training_graph(model)
    assert "sub-pixel" in graph.rewrites[0][2]
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    ref = make_session(model).run(None, {"x": x})[0]
    got = make_session(graph.model).run(None, {"x": x})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_deconv_with_a_dynamic_height_falls_back_to_the_zero_inserted_form():
    model = _decoder("deconv", group=1, k=4, s=2, pads=[1, 1, 1, 1], op=[0, 0])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    graph = build_training_graph(model)
    assert "zero-inserted" in graph.rewrites[0][2]
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(make_session(graph.model).run(None, {"x": x})[0],
                               make_session(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    # a geometry that form cannot take is kept, with the reason
    model = _decoder("deconv", group=1, k=1, s=2, pads=[0, 0, 0, 0], op=[0, 0])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    graph = build_training_graph(model)
    assert graph.rewrites[0][2].startswith("kept") and "negative" in graph.rewrites[0][2]


def test_param_roles_and_bn_training_mode():
    model = cnn((4, 8))
    trainable, frozen, weights, conv = classify_params(model)
    assert set(frozen) == {"bn0.mean", "bn0.var", "bn1.mean", "bn1.var"}
    assert set(weights) == {"conv0.weight", "conv1.weight", "fc.weight"}
    assert set(conv) == {"conv0.weight", "conv1.weight"}
    assert {"fc.bias", "bn0.scale", "bn1.bias"} <= set(trainable)
    graph = build_training_graph(model)
    bns = [n for n in graph.model.graph.node if n.op_type == "BatchNormalization"]
    assert all(len(n.output) == 3 and helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "training_mode")) == 1 for n in bns)
    assert graph.model.opset_import[0].version >= 14 and graph.model.ir_version <= 10
    assert model.opset_import[0].version == 13  # the input model is untouched


def test_two_input_model_is_refused():
    model = cnn((4,))
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    with pytest.raises(UnsupportedModelError, match="one input"):
        build_training_graph(model)


def _one_step(model, l1, x, y, **build):
    from onnxruntime.training.api import CheckpointState, Module

    from onnxsq.training.artifacts import generate

    graph = build_training_graph(model, **build)
    with tempfile.TemporaryDirectory() as tmp:
        tp, cp = generate(graph, Path(tmp), task="classification", l1=l1, ignore_label=255, label_rank=1)
        state = CheckpointState.load_checkpoint(str(cp))
        module = Module(str(tp), state, None, "cpu")
        loss = float(module(x, y))
        grads = {n: state.parameters[n].grad.copy() for n in graph.trainable}
    return loss, grads, graph


@needs_training
def test_l1_block_loss_and_gradient_match_numpy():
    model = cnn((4, 8), seed=3)
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 6).astype(np.int64)
    lam = 0.01
    base_loss, base_grads, graph = _one_step(model, 0.0, x, y)
    loss, grads, _ = _one_step(model, lam, x, y)
    w = values(model)
    expected = lam * sum(np.abs(w[n].astype(np.float64)).sum() for n in graph.weights)
    assert loss - base_loss == pytest.approx(expected, rel=1e-5)
    for n in graph.trainable:
        extra = lam * np.sign(w[n]) if n in graph.weights else 0.0  # L1 on conv/fc weights only
        np.testing.assert_allclose(grads[n] - base_grads[n], extra, atol=1e-5)


@needs_training
def test_relu_as_a_mask_and_the_pool_as_a_gemm_train_with_the_same_loss_and_gradients():
    from onnxsq.training import rewrites

    model = cnn((4, 8), seed=2)
    graph = build_training_graph(model, same_rounding=False)  # training's graph
    for op in ("Relu", "GlobalAveragePool"):
        assert not any(n.op_type == op for n in graph.model.graph.node)
        assert not any(o == op for _, o, _ in graph.rewrites)  # a speed rewrite: not in the report
    # fine-tuning's (the quantized model's rounding): the mean stays GlobalAveragePool
    assert {n.op_type for n in build_training_graph(model).model.graph.node} >= {"GlobalAveragePool"}
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 6).astype(np.int64)
    loss, grads, _ = _one_step(model, 0.0, x, y, same_rounding=False)
    saved = dict(rewrites.SPEED_REWRITES)
    rewrites.SPEED_REWRITES.clear()
    try:
        ref_loss, ref_grads, ref_graph = _one_step(model, 0.0, x, y, same_rounding=False)
    finally:
        rewrites.SPEED_REWRITES.update(saved)
    assert {"Relu", "GlobalAveragePool"} <= {n.op_type for n in ref_graph.model.graph.node}
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for n, g in ref_grads.items():
        np.testing.assert_allclose(grads[n], g, rtol=1e-5, atol=1e-7, err_msg=n)


def _computed_sizes_resize(mode: str) -> onnx.ModelProto:
    """Conv → Resize whose sizes the graph computes (Shape → Slice → Mul → Concat), as FPN exports do."""
    model = _decoder("resize", mode=mode, scales=[2.0, 2.0])
    g = model.graph
    up = next(n for n in g.node if n.op_type == "Resize")
    consts = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
              (("lo", [0]), ("mid", [2]), ("hi", [4]), ("two", [2]))]
    g.initializer.extend(consts)
    g.node.insert(len(g.node) - 1, helper.make_node("Shape", ["c"], ["shape"]))
    g.node.insert(len(g.node) - 1, helper.make_node("Slice", ["shape", "lo", "mid"], ["nc"]))
    g.node.insert(len(g.node) - 1, helper.make_node("Slice", ["shape", "mid", "hi"], ["hw"]))
    g.node.insert(len(g.node) - 1, helper.make_node("Mul", ["hw", "two"], ["hw2"]))
    g.node.insert(len(g.node) - 1, helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0))
    up.input[:] = ["c", "roi", "", "sizes"]
    return model


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_a_resize_of_computed_sizes_is_rewritten_at_its_measured_output_size(mode):
    from onnxsq.training.finetune_loop import measured_shapes

    model = _computed_sizes_resize(mode)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    measured = measured_shapes(model, {"x": x})
    assert measured == {"y": ["N", 4, 10, 12]}
    graph = build_training_graph(model, measured)
    assert [(op, how.startswith("as two MatMuls")) for _, op, how in graph.rewrites] == [("Resize", True)]
    assert all(n.op_type != "Resize" for n in graph.model.graph.node)
    ref = make_session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(make_session(graph.model).run(None, {"x": x[:1]})[0], ref[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(make_session(graph.model).run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    # unmeasured, the output size is unknown: kept, with the reason
    kept = build_training_graph(model)
    assert kept.rewrites[0][1] == "Resize" and "sizes constant or of a measured output size" in kept.rewrites[0][2]
