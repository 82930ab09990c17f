"""Tables of layers that also move elements (onnxsq.simulate.lut_moves): moves before, between or after
the elementwise steps, with shape arithmetic feeding them, equal to onnxruntime and to the float
island they replace; what is not such a table stays an island."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from simulate_helpers import G

from onnxsq.simulate.compare import ort_session
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.package import read_package, write_package
from onnxsq.simulate.program import load_program


def _slice_sigmoid(g: G, x: str) -> str:  # moves, then elementwise
    s = g.node("Slice", [x, g.const(np.array([1], np.int64)), g.const(np.array([3], np.int64)),
                         g.const(np.array([1], np.int64))])
    return g.node("Sigmoid", [s])


def _silu_split(g: G, x: str) -> str:  # elementwise of the input twice, then a Split (yolov8's heads)
    a, b = g.name("part"), g.name("part")
    g.nodes.append(helper.make_node("Split", [g.node("Mul", [x, g.node("Sigmoid", [x])]),
                                              g.const(np.array([1, 2], np.int64))], [a, b], axis=1))
    return b


def _transpose_tanh_reshape(g: G, x: str) -> str:  # a move, elementwise with a scalar, a shape computed
    t = g.node("Tanh", [g.node("Transpose", [x], perm=[0, 2, 1])])
    y = g.node("Mul", [t, g.const(np.float32(0.75))])
    n = g.node("Gather", [g.node("Shape", [y]), g.const(np.array([0], np.int64))], axis=0)
    shape = g.node("Concat", [n, g.const(np.array([-1], np.int64))], axis=0)
    return g.node("Reshape", [y, shape])


def _mixed(g: G, x: str) -> str:  # a moved value times the unmoved input: different positions paired
    return g.node("Mul", [g.node("Transpose", [x], perm=[0, 2, 1]), g.node("Sigmoid", [g.node("Transpose", [x],
                                                                                               perm=[0, 2, 1])])])


def _per_channel_after_move(g: G, x: str) -> str:  # a non-scalar constant does not commute with moves
    return g.node("Mul", [g.node("Transpose", [x], perm=[0, 2, 1]), g.const(np.linspace(0.5, 2, 3, dtype=np.float32))])


TABLES = {"slice_sigmoid": _slice_sigmoid, "silu_split": _silu_split, "transpose_tanh_reshape": _transpose_tanh_reshape}
ISLANDS = {"mixed": _mixed, "per_channel_after_move": _per_channel_after_move}


def _model(build):
    g = G()
    out = g.node("Identity", [g.q(build(g, g.q("x", 4)), 6)])
    return g.model([2, 3, 4], out), out


def _feeds():
    rng = np.random.default_rng(7)
    return [{"x": (rng.standard_normal((2, 3, 4)) * s).astype(np.float32)} for s in (1.0, 3.0, 20.0)]


@pytest.mark.parametrize("case", sorted(TABLES))
def test_moving_layers_are_tables_equal_to_onnxruntime(case, tmp_path):
    model, out = _model(TABLES[case])
    program = load_program(model)
    assert [lay.kind for lay in program.layers if lay.kind not in ("input", "tail")] == ["lut"]
    session = ort_session(model, precise=True)
    compiled, generic = Simulator(program), Simulator(program, compiled=False)
    write_package(program, tmp_path / "pkg")
    packaged = Simulator(read_package(tmp_path / "pkg"))
    for feed in _feeds() * 2:
        want = session.run(None, feed)[0]
        for sim in (compiled, generic, packaged):
            np.testing.assert_array_equal(sim.run(feed).outputs[out], want)
    assert all(st == generic.stats[name] for name, st in compiled.stats.items())
    assert not any(st.fallback for st in compiled.stats.values())


@pytest.mark.parametrize("case", sorted(ISLANDS))
def test_what_does_not_commute_stays_an_island(case):
    model, out = _model(ISLANDS[case])
    program = load_program(model)
    layer = next(lay for lay in program.layers if lay.kind not in ("input", "tail"))
    assert layer.kind == "float"
    session = ort_session(model, precise=True)
    for feed in _feeds():
        np.testing.assert_array_equal(Simulator(program).run(feed).outputs[out], session.run(None, feed)[0])
