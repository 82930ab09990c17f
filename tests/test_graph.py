"""onnxsq.graph: onnx-graphsurgeon helpers, and export_like keeping IR version, opsets and metadata."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.graph import (
    const_value,
    consumers,
    export_like,
    import_graph,
    is_const,
    is_graph_output,
    iter_weighted_nodes,
    new_constant,
    node_label,
    onnx_dtype_to_np,
    producer,
    sole_consumer,
)
from onnxsq.model_io import check_model, opsets


def _with_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    model.producer_name, model.producer_version, model.doc_string = "me", "9.9", "model doc"
    model.model_version = 3
    helper.set_model_props(model, {"author": "tests", "license": "none"})
    return model


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_export_like_keeps_ir_version_opsets_and_metadata(opset, conv_model):
    original = _with_metadata(conv_model(opset=opset))
    before = original.SerializeToString()
    exported = export_like(import_graph(original), original)
    assert original.SerializeToString() == before
    assert exported.ir_version == original.ir_version  # gs alone would stamp the installed onnx's IR
    assert opsets(exported) == {"": opset}
    assert (exported.producer_name, exported.producer_version, exported.doc_string, exported.model_version) == (
        "me", "9.9", "model doc", 3)
    assert {p.key: p.value for p in exported.metadata_props} == {"author": "tests", "license": "none"}
    assert [n.name for n in exported.graph.node] == [n.name for n in original.graph.node]
    check_model(exported)


def test_export_like_runs_in_onnxruntime(conv_model):
    pytest.importorskip("onnxruntime")
    from onnxsq.runtime import make_session

    original = conv_model(opset=11)
    exported = export_like(import_graph(original), original)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(make_session(exported).run(None, {"input": x})[0],
                                  make_session(original).run(None, {"input": x})[0])


def test_export_like_extra_opsets_and_min_ir_version(conv_model):
    original = conv_model(opset=13)
    original.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    graph = import_graph(original)
    exported = export_like(graph, original, extra_opsets={"com.microsoft": 1, "ai.onnx.ml": 2, "": 11},
                           min_ir_version=8)
    # Existing domains are only ever raised, new ones added; the IR is raised only as asked.
    assert opsets(exported) == {"": 13, "com.microsoft": 1, "ai.onnx.ml": 2}
    assert exported.ir_version == 8
    assert export_like(import_graph(original), original, min_ir_version=3).ir_version == 7


def test_export_like_removes_dead_nodes_but_keeps_unused_inputs(conv_model):
    original = conv_model(bn=False, relu=False)
    original.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]))
    graph = import_graph(original)
    dead = gs.Variable("dead", dtype=np.float32)
    graph.nodes.append(gs.Node("Relu", name="dead_relu", inputs=[graph.inputs[0]], outputs=[dead]))
    exported = export_like(graph, original)
    assert [n.name for n in exported.graph.node] == ["conv"]
    assert [i.name for i in exported.graph.input] == ["input", "unused"]


def _constants_model() -> onnx.ModelProto:
    """Constants as an initializer and as Constant nodes of each attribute form, summed."""
    nodes = [
        helper.make_node("Constant", [], ["c_value"], name="c_value",
                         value=numpy_helper.from_array(np.array([1.0, 2.0], np.float32))),
        helper.make_node("Constant", [], ["c_float"], name="c_float", value_float=3.0),
        helper.make_node("Constant", [], ["c_floats"], name="c_floats", value_floats=[4.0, 5.0]),
        helper.make_node("Constant", [], ["c_int"], name="c_int", value_int=6),
        helper.make_node("Constant", [], ["c_ints"], name="c_ints", value_ints=[7, 8]),
        helper.make_node("Add", ["x", "init"], ["s0"], name="add_init"),
        helper.make_node("Add", ["s0", "c_value"], ["s1"], name="add_value"),
        helper.make_node("Add", ["s1", "c_float"], ["s2"], name="add_float"),
        helper.make_node("Add", ["s2", "c_floats"], ["y"], name="add_floats"),
        helper.make_node("Add", ["c_int", "c_ints"], ["z"], name="add_ints"),
        helper.make_node("Relu", ["s0"], ["r"], name=""),
    ]
    graph = helper.make_graph(
        nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("y", TensorProto.FLOAT), ("z", TensorProto.INT64), ("r", TensorProto.FLOAT), ("s1", TensorProto.FLOAT))],
        initializer=[numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "init")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_const_value_of_initializers_and_every_constant_form():
    graph = import_graph(_constants_model())
    t = graph.tensors()
    expected = {"init": [0.5, 0.25], "c_value": [1.0, 2.0], "c_float": 3.0, "c_floats": [4.0, 5.0],
                "c_int": 6, "c_ints": [7, 8]}
    for name, value in expected.items():
        got = const_value(t[name])
        assert got is not None, name
        np.testing.assert_array_equal(got, np.asarray(value))
        assert is_const(t[name])
    assert const_value(t["c_float"]).dtype == np.float32
    assert const_value(t["c_ints"]).dtype == np.int64
    for name in ("x", "s0", "y"):
        assert const_value(t[name]) is None and not is_const(t[name])
    assert not is_const(None)


def test_producer_consumers_and_graph_outputs():
    graph = import_graph(_constants_model())
    t = graph.tensors()
    assert producer(t["s0"]).name == "add_init"
    assert producer(t["x"]) is None
    assert sorted(n.name for n in consumers(t["s0"])) == ["", "add_value"]
    # s0 has two readers, s1 is also a graph output, s2 has exactly one reader.
    assert sole_consumer(graph, t["s0"]) is None
    assert sole_consumer(graph, t["s1"]) is None
    assert sole_consumer(graph, t["s2"]).name == "add_floats"
    assert is_graph_output(graph, t["s1"]) and not is_graph_output(graph, t["s2"])


def test_node_label_falls_back_to_op_and_output():
    graph = import_graph(_constants_model())
    labels = {node_label(n) for n in graph.nodes}
    assert "add_init" in labels and "Relu(r)" in labels


def test_new_constant_never_collides():
    graph = import_graph(_constants_model())
    a = new_constant(graph, "init", np.zeros(3, np.float32))
    assert a.name == "init_1"
    graph.nodes[0].inputs.append(a)  # now part of the graph
    b = new_constant(graph, "init", np.ones(2))
    assert b.name == "init_2"
    assert new_constant(graph, "fresh", np.ones(1)).name == "fresh"
    assert b.values.flags["C_CONTIGUOUS"]


def test_iter_weighted_nodes_only_yields_constant_weights(conv_model):
    model = conv_model(bn=False, relu=False)
    # A second Conv whose weight is a graph input: computed at run time, not yielded.
    model.graph.input.append(helper.make_tensor_value_info("w_dyn", TensorProto.FLOAT, [4, 4, 1, 1]))
    model.graph.node.append(helper.make_node("Conv", ["output", "w_dyn"], ["out2"], name="dyn_conv"))
    model.graph.output.append(helper.make_tensor_value_info("out2", TensorProto.FLOAT, None))
    graph = import_graph(model)
    found = list(iter_weighted_nodes(graph, ["Conv", "Gemm"]))
    assert [(n.name, w.name) for n, w in found] == [("conv", "conv.weight")]
    assert list(iter_weighted_nodes(graph, ["Gemm"])) == []


def test_onnx_dtype_to_np():
    assert onnx_dtype_to_np(TensorProto.FLOAT) == np.float32
    assert onnx_dtype_to_np(TensorProto.FLOAT16) == np.float16
    assert onnx_dtype_to_np(TensorProto.INT64) == np.int64
    assert onnx_dtype_to_np(TensorProto.BOOL) == np.bool_


def test_unique_names_avoid_graph_model_and_given_names(conv_model):
    from onnxsq.graph import UniqueNames

    model = conv_model(opset=13)
    taken = {n.name for n in model.graph.node} | {i.name for i in model.graph.initializer}
    for names in (UniqueNames(model), UniqueNames(import_graph(model))):
        base = next(iter(taken - {""}))
        first, second = names(base), names.fresh(base)
        assert first not in taken and second not in taken and first != second and base in names
        assert names("brand_new") == "brand_new" and names("brand_new") == "brand_new_1"
    assert UniqueNames(["a", "a_1"])("a") == "a_2"


def test_import_graph_does_not_hold_on_to_the_model(conv_model):
    """gs keeps the opset list as a live view into the proto (pinning all its weights); ours is a copy."""
    model = conv_model(opset=13)
    graph = import_graph(model)
    model.opset_import[0].version = 99
    assert isinstance(graph.import_domains, list)
    assert [o.version for o in graph.import_domains] == [13]
