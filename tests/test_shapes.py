"""onnxsq.shapes: --input-shape parsing, the fill rules of resolve_input_shapes, image sizes, the hint.

Also home of the dynamic-shape model builders the verify, optimize, verify-CLI and quantize-CLI tests
import (``pythonpath = tests``): models that, like PP-OCR or YOLO exports, run only at some sizes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.cli.options import parse_input_shapes
from onnxsq.errors import InvalidOptionError
from onnxsq.shapes import (
    SHAPE_HINT,
    format_shapes,
    image_size,
    parse_input_shape,
    resolve_input_shapes,
    shape_hint,
    shape_template,
)

# --- builders ---------------------------------------------------------------------------------------


def spatial_after(size: int, convs: int = 3) -> int:
    """H (or W) after ``convs`` valid 3x3 stride-2 convs: (h - 3) // 2 + 1 each; <= 0: no output."""
    for _ in range(convs):
        size = (size - 3) // 2 + 1
    return size


def strided_model(fixed: int, *, nhwc: bool = False, bn: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x [N,3,H,W] (or [N,H,W,3]) → 3 valid stride-2 convs (BN after the first) → Add(a constant
    1×4×fixed×fixed) → GlobalAveragePool → Flatten → y [N,4]. Runs only where the conv output is
    ``fixed`` (or 1) wide: H = W = 224 for fixed = spatial_after(224) = 27; at the old fill 8 the
    third conv has no output at all."""
    rng = np.random.default_rng(seed)
    inits, nodes, last, cin = [], [], "x", 3
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        last = "x_nchw"
    for i in range(3):
        inits.append(numpy_helper.from_array((rng.standard_normal((4, cin, 3, 3)) * 0.3).astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("Conv", [last, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                                      kernel_shape=[3, 3], strides=[2, 2]))
        last, cin = f"c{i}", 4
        if i == 0 and bn:
            params = {"bn.scale": rng.uniform(0.5, 1.5, 4), "bn.bias": rng.normal(0, 0.2, 4),
                      "bn.mean": rng.normal(0, 0.3, 4), "bn.var": rng.uniform(0.5, 2.0, 4)}
            inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
            nodes.append(helper.make_node("BatchNormalization", [last, *params], ["bn_out"], name="bn"))
            nodes.append(helper.make_node("Relu", ["bn_out"], ["relu_out"], name="relu"))
            last = "relu_out"
    inits.append(numpy_helper.from_array(rng.standard_normal((1, 4, fixed, fixed)).astype(np.float32), "pos"))
    nodes += [helper.make_node("Add", [last, "pos"], ["added"], name="add_pos"),
              helper.make_node("GlobalAveragePool", ["added"], ["pooled"], name="gap"),
              helper.make_node("Flatten", ["pooled"], ["y"], name="flat")]
    shape = ["N", "H", "W", 3] if nhwc else ["N", 3, "H", "W"]
    graph = helper.make_graph(nodes, "strided", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnxsq-tests")
    model.ir_version = 7
    return model


def shared_symbol_model() -> onnx.ModelProto:
    """a [N,3,S,S] and b [N,S]: y = mean of a over channels and W, plus b. Runs only when b's S is a's."""
    nodes = [helper.make_node("ReduceMean", ["a"], ["m"], name="mean", axes=[1, 3], keepdims=0),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "shared",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, "S", "S"]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "S"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _inputs_model(*shapes, ir_version: int = 7, init_as_input: bool = False) -> onnx.ModelProto:
    """Identity per input ``i0, i1, ...`` of the given shapes (and a weight also listed as an input)."""
    inputs = [helper.make_tensor_value_info(f"i{k}", TensorProto.FLOAT, s) for k, s in enumerate(shapes)]
    nodes = [helper.make_node("Identity", [f"i{k}"], [f"o{k}"]) for k in range(len(shapes))]
    outputs = [helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, None) for k in range(len(shapes))]
    inits = []
    if init_as_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]))
        inits.append(numpy_helper.from_array(np.ones(2, np.float32), "w"))
    graph = helper.make_graph(nodes, "inputs", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    return model


def _one(name: str, shape: list) -> onnx.ModelProto:
    model = _inputs_model(shape)
    model.graph.input[0].name = model.graph.node[0].input[0] = name
    return model


# --- parse_input_shape ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("x:1x3x224x224", ("x", (1, 3, 224, 224))),
    ("1x3x224x224", (None, (1, 3, 224, 224))),
    ("input:0:1x3", ("input:0", (1, 3))),  # TF-style names: split on the last ':'
    (" images : 2 x 3 ", ("images", (2, 3))),
    ("seq:7", ("seq", (7,))),
    ("x:1,3,224,224", ("x", (1, 3, 224, 224))),  # other tools' spellings
    ("x:[1, 3, 48, 320]", ("x", (1, 3, 48, 320))),
    ("[2,3]", (None, (2, 3))),
])
def test_parse_input_shape(spec, expected):
    assert parse_input_shape(spec) == expected


@pytest.mark.parametrize("spec, needle", [
    ("", "no dims"), ("x:", "no dims"), (":1x3", "no input name"), ("x:1xx3", "no dims"),
    ("x:1x0", "positive"), ("x:1xax3", "'a' is not a dim"), ("x:1x-3", "'-3' is not a dim"),
    ("x:1,3x2", "'1,3' is not a dim"), ("x:1x3.5", "not a dim"), ("x:1,,3", "no dims"), ("x:[1,3", "'[1' is not"),
])
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(InvalidOptionError) as info:
        parse_input_shape(spec)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and repr(spec) in msg


def test_cli_parse_helper_refuses_a_repeated_name():
    assert parse_input_shapes(()) is None
    assert parse_input_shapes(("a:1x2", "b:3")) == {"a": (1, 2), "b": (3,)}
    with pytest.raises(InvalidOptionError, match="a: given twice"):
        parse_input_shapes(("a:1x2", "a:1x3"))
    with pytest.raises(InvalidOptionError, match="given twice"):
        parse_input_shapes(("1x2", "3x4"))


# --- resolve_input_shapes ---------------------------------------------------------------------------

def test_fill_rules_by_axis_and_attempt():
    model = _inputs_model(["N", 3, "H", "W"], ["N", "C", "H2", "W2"], [1, "seq", 5], ["B", 8, 4, 2])
    assert resolve_input_shapes(model) == {
        "i0": (1, 3, 224, 224),      # batch 1, NCHW spatial 224
        "i1": (1, 3, 224, 224),      # dynamic channel axis → 3
        "i2": (1, 32, 5),            # a static dim stays, a sequence → 32
        "i3": (1, 8, 4, 2),          # all static but the batch
    }
    again = resolve_input_shapes(model, attempt=1)
    assert again["i0"] == (1, 3, 320, 320) and again["i2"] == (1, 64, 5)
    assert resolve_input_shapes(model, batch=4)["i0"] == (4, 3, 224, 224)
    text_line = resolve_input_shapes(model, attempt=2)  # OCR recognizers: H 48 fixed by a Reshape
    assert text_line["i0"] == (1, 3, 48, 320) and text_line["i2"] == (1, 16, 5)
    assert resolve_input_shapes(model, attempt=3)["i0"] == (1, 3, 32, 320)
    with pytest.raises(ValueError):
        resolve_input_shapes(model, attempt=4)


def test_nhwc_is_recognized_by_its_static_channel_axis():
    model = _inputs_model(["N", "H", "W", 3], ["N", "H", "W", 1], ["N", "H", "W", 4], ["N", "A", "B", 7])
    shapes = resolve_input_shapes(model)
    assert shapes["i0"] == (1, 224, 224, 3) and shapes["i1"] == (1, 224, 224, 1) and shapes["i2"] == (1, 224, 224, 4)
    assert shapes["i3"] == (1, 3, 224, 7), "axis 3 of 7 is not a channel axis: NCHW rules"


def test_shared_symbols_agree_across_inputs():
    model = shared_symbol_model()
    assert resolve_input_shapes(model) == {"a": (1, 3, 224, 224), "b": (1, 224)}
    assert resolve_input_shapes(model, {"b": (2, 40)}) == {"a": (2, 3, 40, 40), "b": (2, 40)}
    unnamed = _inputs_model([None, None], [None, None])
    assert resolve_input_shapes(unnamed, attempt=1) == {"i0": (1, 64), "i1": (1, 64)}


def test_given_shapes_are_checked_against_the_model():
    model = _inputs_model(["N", 3, "H", "W"], ["N", "seq"])
    assert resolve_input_shapes(model, {"i0": (2, 3, 64, 48)}) == {"i0": (2, 3, 64, 48), "i1": (2, 32)}
    cases = [({"nope": (1,)}, "no input 'nope' (its inputs: i0, i1)"),
             ({"i0": (1, 3, 64)}, "rank 4 (Nx3xHxW)"),
             ({"i0": (1, 4, 64, 64)}, "dim 1 is 4"),
             ({None: (1, 3, 64, 64)}, "has 2 inputs (i0, i1)")]
    for given, needle in cases:
        with pytest.raises(InvalidOptionError) as info:
            resolve_input_shapes(model, given)
        assert needle in str(info.value) and "\n" not in str(info.value)
    one = _inputs_model(["N", 3, "H", "W"])
    assert resolve_input_shapes(one, {None: (1, 3, 96, 96)}) == {"i0": (1, 3, 96, 96)}
    with pytest.raises(InvalidOptionError, match="given twice"):
        resolve_input_shapes(one, {None: (1, 3, 96, 96), "i0": (1, 3, 96, 96)})


def test_initializers_listed_as_inputs_get_no_shape_and_the_model_is_not_touched():
    model = _inputs_model(["N", 3], ir_version=3, init_as_input=True)
    before = model.SerializeToString()
    assert resolve_input_shapes(model) == {"i0": (1, 3)}
    with pytest.raises(InvalidOptionError, match=r"its inputs: i0\)"):
        resolve_input_shapes(model, {"w": (2,)})
    assert model.SerializeToString() == before


# --- image_size, the hint ---------------------------------------------------------------------------

def test_image_size_for_dynamic_models(caplog):
    dyn = strided_model(27)
    with caplog.at_level(logging.INFO, logger="onnxsq.shapes"):
        assert image_size(dyn) == (224, 224)
    assert "dynamic size" in caplog.text and "224x224" in caplog.text
    assert image_size(dyn, {"x": (1, 3, 143, 96)}) == (143, 96)
    assert image_size(strided_model(27, nhwc=True), {None: (1, 100, 90, 3)}, layout="nhwc") == (100, 90)
    static = _inputs_model(["N", 3, 32, 32])
    assert image_size(static) is None
    with pytest.raises(InvalidOptionError):
        image_size(static, {"i0": (1, 3, 64, 64)})  # checked even where the model fixes the size
    assert image_size(_inputs_model(["N", "seq"])) is None


def test_shape_hint_names_the_dynamic_inputs():
    assert "--input-shape NAME:1x3x224x224" in SHAPE_HINT and "--no-verify" in SHAPE_HINT
    hint = shape_hint(strided_model(27))
    assert hint == "pass --input-shape x:1x3xHxW (the sizes it takes) or --no-verify"
    assert "'x y:1x3'" in shape_hint(_one("x y", [None, 3]))  # quoted for a shell
    # exporters' symbols (paddle2onnx, tf2onnx) give way to roles, or to '?'
    assert shape_template(["p2o.DynamicDimension.0", 3, None, "p2o.DynamicDimension.1"]) == "1x3xHxW"
    assert shape_template(["unk__236", "a", "b", 3]) == "1xHxWx3"
    assert shape_template(["N", "C", "H", "W"]) == "1xCxHxW"
    assert shape_template(["batch", "seq_len", "unk__7", None, 5]) == "1xseq_lenx?x?x5"
    assert shape_hint(shared_symbol_model(), "--data FILE.npz").count("--input-shape") == 2
    static = _inputs_model([1, 3])
    assert shape_hint(static) == "pass --no-verify" and shape_hint(static, None) == ""
    assert format_shapes({"a": (1, 3), "b": (2,)}) == "a:1x3, b:2"


def test_the_builders_run_where_they_say():
    ort = pytest.importorskip("onnxruntime")
    from onnxsq.runtime import make_session

    assert spatial_after(224) == 27 and spatial_after(320) == 39 and spatial_after(143) == 17
    assert spatial_after(8) <= 0
    session = make_session(strided_model(27))
    assert session.run(None, {"x": np.zeros((1, 3, 224, 224), np.float32)})[0].shape == (1, 4)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    for size in (8, 320):
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own (pybind) types
            session.run(None, {"x": np.zeros((1, 3, size, size), np.float32)}, quiet)


# --- eval's image size (its CLI tests live elsewhere; this is the shape rule) ------------------------

def test_eval_sizes_images_for_dynamic_models(tmp_path, run_cli):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, sizes in (("a", [(20, 30), (41, 25)]), ("b", [(64, 64), (33, 17)])):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    default, fixed = tmp_path / "d.onnx", tmp_path / "f.onnx"
    default.write_bytes(strided_model(spatial_after(224)).SerializeToString())
    fixed.write_bytes(strided_model(spatial_after(143)).SerializeToString())
    res = run_cli("-v", "eval", default, "--data", tmp_path / "data")
    assert res.code == 0 and "224x224" in res.err, res.err
    assert run_cli("eval", fixed, "--data", tmp_path / "data").code == 1
    res = run_cli("eval", fixed, "--data", tmp_path / "data", "--input-shape", "x:1x3x143x143")
    assert res.code == 0, res.err
    res = run_cli("eval", fixed, "--data", tmp_path / "data", "--size", "143", "143", "--input-shape", "x:1x3x9x9")
    assert res.code == 0 and "--input-shape is ignored" in res.err
