"""equalize: power-of-two cross-layer equalization is exact (same outputs bit for bit), balances the
per-channel weight ranges, and refuses what is not positively homogeneous, with reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.passes.equalize import equalize
from onnxsq.runtime import make_session


def _pair_model(act: str | None = "Relu", *, group2: int = 1, depthwise: bool = False, seed: int = 0,
                spread: float = 30.0) -> onnx.ModelProto:
    """Conv(3→8) → act → Conv(8→4, group2); channel ranges of the first conv spread over ``spread``x."""
    rng = np.random.default_rng(seed)
    c = 8
    w1 = rng.standard_normal((c, 1 if depthwise else 3, 3, 3)) * np.geomspace(1 / spread, 1, c).reshape(-1, 1, 1, 1)
    w2 = rng.standard_normal((4, c // group2, 1, 1))
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(
        rng.normal(0, 0.1, c).astype(np.float32), "b1"), numpy_helper.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv1", pads=[1] * 4,
                              group=c if depthwise else 1)]
    last = "y1"
    if act is not None:
        ins = [last] + (["slope"] if act == "PRelu" else [])
        if act == "PRelu":
            inits.append(numpy_helper.from_array(np.array([0.1], np.float32), "slope"))
        nodes.append(helper.make_node(act, ins, ["a1"], name="act"))
        last = "a1"
    nodes.append(helper.make_node("Conv", [last, "w2"], ["out"], name="conv2", group=group2))
    cin = c if depthwise else 3
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 6, 6])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _run(model, x):
    return make_session(model).run(None, {"x": x})[0]


def _ranges(model, name):
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name.startswith(name)))
    return w


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "PRelu", None])
@pytest.mark.parametrize("group2,depthwise", [(1, False), (2, False), (1, True)])
def test_equalized_pair_computes_the_same_bits(act, group2, depthwise):
    model = _pair_model(act, group2=group2, depthwise=depthwise)
    result, report = equalize(model)
    onnx.checker.check_model(result, full_check=True)
    assert [n.op_type for n in result.graph.node] == [n.op_type for n in model.graph.node]
    (cand,) = report.candidates
    assert cand.action == "equalized", cand.reason
    x = np.random.default_rng(1).standard_normal((1, 8 if depthwise else 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(result, x), _run(model, x))  # powers of two: exact
    w1, w2 = _ranges(result, "w1"), _ranges(result, "w2")
    r1 = np.abs(w1.reshape(8, -1)).max(axis=1)
    r2 = np.abs(w2.reshape(group2, 4 // group2, 8 // group2, -1)).max(axis=(1, 3)).reshape(-1)
    # each channel's two ranges within a factor of two of each other (s = 2**round(log2 sqrt(r1/r2)))
    assert np.all(np.abs(np.log2(r1 / r2)) <= 1.0 + 1e-6)
    before = np.abs(_ranges(model, "w1").reshape(8, -1)).max(axis=1)
    assert np.all(np.frexp(r1 / before)[0] == 0.5)  # every factor is a power of two


@pytest.mark.parametrize("act", ["Sigmoid", "HardSwish", "Tanh"])
def test_non_homogeneous_activation_is_refused_with_a_reason(act):
    model = _pair_model(act)
    result, report = equalize(model)
    (cand,) = report.candidates
    assert cand.action == "skipped" and "not positively homogeneous" in cand.reason
    assert [i.name for i in result.graph.initializer] == [i.name for i in model.graph.initializer]


def test_shared_output_and_input_untouched():
    model = _pair_model("Relu")
    model.graph.output.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 8, 6, 6]))
    before = model.SerializeToString()
    _, report = equalize(model)
    assert model.SerializeToString() == before
    (cand,) = report.candidates
    assert cand.action == "skipped" and "shared or a graph output" in cand.reason
