"""An LSTM unrolled in time for training (onnxruntime-training's LSTMGrad is unusable on the CPU): the same
Y, Y_h, Y_c as onnxruntime's LSTM, every direction, with and without initial states and bias."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from onnxsq.graph import UniqueNames
from onnxsq.runtime import make_session
from onnxsq.training.rewrites import REWRITES, static_shapes


def _lstm(direction: str, states: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    dirs, hidden, inp = (2 if direction == "bidirectional" else 1), 5, 3
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name) for name, shape in (
        ("W", (dirs, 4 * hidden, inp)), ("R", (dirs, 4 * hidden, hidden)), ("B", (dirs, 8 * hidden)),
        ("h0", (dirs, 2, hidden)), ("c0", (dirs, 2, hidden)))]
    ins = ["x", "W", "R", "B", "", "h0", "c0"] if states else ["x", "W", "R", "B"]
    node = helper.make_node("LSTM", ins, ["y", "yh", "yc"], name="lstm", hidden_size=hidden, direction=direction)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (
        ("y", [7, dirs, 2, hidden]), ("yh", [dirs, 2, hidden]), ("yc", [dirs, 2, hidden]))]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 2, inp])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("direction", "states"), [("bidirectional", True), ("bidirectional", False),
                                                   ("reverse", True), ("forward", False)])
def test_the_rewrite_computes_the_lstm(direction, states):
    model = _lstm(direction, states)
    x = {"x": np.random.default_rng(1).normal(0, 1, (7, 2, 3)).astype(np.float32)}
    rewritten, nodes, how = _rewritten(model, x)
    onnx.checker.check_model(rewritten)
    assert "LSTM" not in {n.op_type for n in nodes} and "unrolled over 7 steps" in how


def _rewritten(model: onnx.ModelProto, x: dict) -> tuple[onnx.ModelProto, list, str]:
    """The model with its LSTM rewritten; its outputs on ``x`` equal the LSTM's (rtol 1e-5, atol 1e-6)."""
    want = make_session(model).run(None, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    nodes, how = REWRITES["LSTM"](rewritten, rewritten.graph.node[0], static_shapes(model), UniqueNames(rewritten))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    for got, ref in zip(make_session(rewritten).run(None, x), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    return rewritten, nodes, how


def test_sequence_lens_and_unknown_lengths_are_refused():
    model = _lstm("bidirectional", False)
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "lens"], ["y"], hidden_size=5, direction="bidirectional")
    with pytest.raises(ValueError, match="sequence_lens"):
        REWRITES["LSTM"](model, node, static_shapes(model), UniqueNames(model))
    with pytest.raises(ValueError, match="unknown sequence length"):
        REWRITES["LSTM"](model, model.graph.node[0], {}, UniqueNames(model))


def test_a_dynamic_batch_without_initial_states_starts_from_zeros():
    model = _lstm("bidirectional", False)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "N"
    x = {"x": np.random.default_rng(2).normal(0, 1, (7, 3, 3)).astype(np.float32)}
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[-2].dim_param = "N"
    _rewritten(model, x)
