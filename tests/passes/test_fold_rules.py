"""fold-batchnorm's rules one at a time: a check changes nothing and gives a match or a reason; a rewrite
applies the match exactly; the pass reports which rule took each BN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

from builders import Builder, assert_equivalent, feeds_for, ops

from onnxsq.graph import UniqueNames, export_like, import_graph
from onnxsq.passes.fold_batchnorm import RULES, fold_batchnorm
from onnxsq.passes.fold_batchnorm.bn_math import bn_affine
from onnxsq.passes.fold_batchnorm.edit import TensorTypes
from onnxsq.passes.fold_batchnorm.rules import Context, IntoConvAfter, IntoLayerBefore, Match, ToMulAdd

RULE_NAMES = {r.name for r in RULES}


def _graph_bn(model: onnx.ModelProto):
    graph = import_graph(model)
    bn = next(n for n in graph.nodes if n.op == "BatchNormalization")
    s, t = bn_affine(*(inp.values for inp in bn.inputs[1:5]), eps=float(bn.attrs.get("epsilon", 1e-5)))
    return graph, bn, s, t, Context(graph, TensorTypes(model), UniqueNames(graph))


def _conv_bn_conv(pads: list[int], *, after_layer: bool = True) -> onnx.ModelProto:
    b = Builder(3)
    x = b.node("Relu", ["x"]) if not after_layer else "x"
    c = b.node("Conv", [x, b.const("w", b.weight((3, 2, 3, 3), 18))], pads=[1, 1, 1, 1]) if after_layer else x
    y = b.bn(c, 3 if after_layer else 2)
    z = b.node("Conv", [y, b.const("w2", b.weight((4, 3 if after_layer else 2, 3, 3), 27))], pads=pads)
    return b.model({"x": [1, 2, 6, 6]}, [z])


def test_rules_are_in_order_and_named_once():
    assert [type(r) for r in RULES] == [IntoLayerBefore, IntoConvAfter, ToMulAdd]
    assert len(RULE_NAMES) == 3 and all(n == n.lower() and " " not in n for n in RULE_NAMES)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_check_changes_nothing(rule):
    model = _conv_bn_conv([0, 0, 0, 0])
    graph, bn, s, t, ctx = _graph_bn(model)
    before = export_like(graph, model).SerializeToString()
    found = rule.check(ctx, bn, s, t)
    assert isinstance(found, Match) and found.bn is bn
    assert export_like(graph, model).SerializeToString() == before


def test_into_layer_before_refuses_a_graph_input_with_the_reason():
    model = _conv_bn_conv([0, 0, 0, 0], after_layer=False)
    graph, bn, s, t, ctx = _graph_bn(model)
    why = IntoLayerBefore().check(ctx, bn, s, t)
    assert isinstance(why, str) and "Relu" in why and "cannot absorb" in why


def test_into_conv_after_refuses_padding_when_the_shift_is_not_zero():
    model = _conv_bn_conv([1, 1, 1, 1], after_layer=False)
    graph, bn, s, t, ctx = _graph_bn(model)
    assert np.any(t != 0)
    why = IntoConvAfter().check(ctx, bn, s, t)
    assert isinstance(why, str) and "pads its input" in why


@pytest.mark.parametrize(("pads", "rule", "left"), [
    ([0, 0, 0, 0], "into-conv-after", []),
    ([1, 1, 1, 1], "to-mul-add", []),  # the Mul/Add then stay: a Relu produced the BN's input
], ids=["forward", "fallback"])
def test_the_pass_reports_the_rule_that_took_the_bn(pads, rule, left):
    model = _conv_bn_conv(pads, after_layer=False)
    folded, report = fold_batchnorm(model)
    onnx.checker.check_model(folded)
    entry = next(c for c in report.candidates if c.op == "BatchNormalization")
    assert entry.details["rule"] == rule, report.to_json()
    assert "BatchNormalization" not in ops(folded)
    if rule == "to-mul-add":  # the earlier rules' reasons are kept
        assert "not folded:" in entry.reason and "cannot absorb" in entry.reason and "pads its input" in entry.reason
    assert_equivalent(model, folded, feeds_for([1, 2, 6, 6]))


def test_backward_rule_wins_over_forward_for_a_bn_between_two_convs():
    model = _conv_bn_conv([1, 1, 1, 1])
    folded, report = fold_batchnorm(model)
    entry = next(c for c in report.candidates if c.op == "BatchNormalization")
    assert entry.details["rule"] == "into-layer-before" and entry.action == "folded"
    assert ops(folded) == ["Conv", "Conv"]
    assert_equivalent(model, folded, feeds_for([1, 2, 6, 6]))


def test_keep_leaves_the_bn_with_every_rules_reason():
    model = _conv_bn_conv([1, 1, 1, 1], after_layer=False)
    folded, report = fold_batchnorm(model, standalone="keep")
    entry = next(c for c in report.candidates if c.op == "BatchNormalization")
    assert entry.action == "skipped" and "cannot absorb" in entry.reason and "pads its input" in entry.reason
    assert "BatchNormalization" in ops(folded)
