"""fold-batchnorm: property tests over random layer configurations, each checked against onnxruntime
(graph optimizations off; rtol 1e-4, atol 1e-5 for float32) plus structure and onnx.checker."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")

from builders import Builder, assert_equivalent, feeds_for, ops

from onnxsq.errors import VerificationError
from onnxsq.passes import get_pass
from onnxsq.passes.fold_batchnorm import bn_math, fold_batchnorm

DTYPES = st.sampled_from([np.float16, np.float32, np.float64])
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fold_and_check(model: onnx.ModelProto, feeds, dtype=np.float32, bn_left: int = 0, **kw):
    before = model.SerializeToString()
    folded, report = fold_batchnorm(model, **kw)
    assert model.SerializeToString() == before, "the input model was mutated"
    onnx.checker.check_model(folded)
    assert folded.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in folded.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert ops(folded).count("BatchNormalization") == bn_left, report.to_json()
    assert_equivalent(model, folded, feeds, dtype)
    return folded, report


@st.composite
def conv_configs(draw):
    dims = draw(st.integers(1, 3))
    group_kind = draw(st.sampled_from(["one", "two", "depthwise"]))
    cin_per_group = 1 if group_kind == "depthwise" else draw(st.integers(1, 3))
    groups = {"one": 1, "two": 2, "depthwise": draw(st.integers(2, 4))}[group_kind]
    cout = groups * (1 if group_kind == "depthwise" else draw(st.integers(1, 3)))
    return dict(
        dims=dims, groups=groups, cin=cin_per_group * groups, cout=cout,
        kernel=draw(st.integers(1, 3)), stride=draw(st.integers(1, 2)), dilation=draw(st.integers(1, 2)),
        pad=draw(st.integers(0, 1)), bias=draw(st.booleans()), dtype=draw(DTYPES),
        constant_nodes=draw(st.booleans()), through=draw(st.sampled_from(["", "add", "mul", "add-mul", "sub-div"])),
        seed=draw(st.integers(0, 2**16)),
    )


def _through(b: Builder, y: str, kind: str, channels: int, rank: int) -> str:
    """Constant elementwise nodes between a layer and its BN, per-channel [C, 1, ...] constants."""
    shape = (channels,) + (1,) * (rank - 2)
    for op in [k for k in kind.split("-") if k]:
        value = b.rng.uniform(0.5, 1.5, shape) if op in ("mul", "div") else b.rng.normal(0, 1, shape)
        y = b.node(op.capitalize(), [y, b.const("c", value)])
    return y


@PROPS
@given(conv_configs())
def test_conv_bn_folds_exactly(cfg):
    b = Builder(cfg["seed"], cfg["dtype"], cfg["constant_nodes"])
    k, d = cfg["kernel"], cfg["dims"]
    w = b.const(
        "w", b.weight((cfg["cout"], cfg["cin"] // cfg["groups"]) + (k,) * d, cfg["cin"] // cfg["groups"] * k**d)
    )
    ins = ["x", w] + ([b.const("b", b.rng.normal(0, 1, cfg["cout"]))] if cfg["bias"] else [])
    y = b.node("Conv", ins, group=cfg["groups"], kernel_shape=[k] * d, strides=[cfg["stride"]] * d,
               dilations=[cfg["dilation"]] * d, pads=[cfg["pad"]] * 2 * d)
    y = _through(b, y, cfg["through"], cfg["cout"], d + 2)
    y = b.node("Relu", [b.bn(y, cfg["cout"])])
    shape = [2, cfg["cin"]] + [6 if d < 3 else 5] * d
    model = b.model({"x": shape}, [y])
    folded, report = fold_and_check(model, feeds_for(shape, cfg["dtype"]), cfg["dtype"])
    assert ops(folded).count("Conv") == 1 and not {"Add", "Mul", "Sub", "Div"} & set(ops(folded))
    assert report.candidates[0].action == "folded"


@PROPS
@given(dims=st.integers(1, 3), groups=st.integers(1, 3), cin_g=st.integers(1, 2), cout_g=st.integers(1, 3),
       kernel=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1), bias=st.booleans(),
       add_bias=st.booleans(), dtype=st.sampled_from([np.float16, np.float32]), seed=st.integers(0, 2**16))
def test_convtranspose_bn_folds_exactly(dims, groups, cin_g, cout_g, kernel, stride, pad, bias, add_bias, dtype, seed):
    b = Builder(seed, dtype)
    cin, cout = cin_g * groups, cout_g * groups
    w = b.const("w", b.weight((cin, cout_g) + (kernel,) * dims, cin_g * kernel**dims))
    ins = ["x", w] + ([b.const("b", b.rng.normal(0, 1, cout))] if bias else [])
    pad = min(pad, kernel - 1)
    y = b.node("ConvTranspose", ins, group=groups, kernel_shape=[kernel] * dims, strides=[stride] * dims,
               pads=[pad] * 2 * dims, output_padding=[stride - 1] * dims)
    if add_bias:  # the exporters' ConvTranspose → Add(bias) → BN
        y = _through(b, y, "add", cout, dims + 2)
    y = b.bn(y, cout)
    shape = [1, cin] + [4] * dims
    folded, _ = fold_and_check(b.model({"x": shape}, [y]), feeds_for(shape, dtype), dtype)
    assert ops(folded) == ["ConvTranspose"]


@PROPS
@given(m=st.integers(1, 4), k=st.integers(1, 5), n=st.integers(1, 5), trans_a=st.booleans(), trans_b=st.booleans(),
       alpha=st.sampled_from([1.0, 0.5, 2.0]), beta=st.sampled_from([1.0, 0.25]),
       c_shape=st.sampled_from(["none", "n", "1n", "mn", "m1", "scalar"]), dtype=DTYPES,
       constant_nodes=st.booleans(), seed=st.integers(0, 2**16))
def test_gemm_bn_folds_exactly(m, k, n, trans_a, trans_b, alpha, beta, c_shape, dtype, constant_nodes, seed):
    b = Builder(seed, dtype, constant_nodes)
    w = b.const("w", b.weight((n, k) if trans_b else (k, n), k))
    c = {"none": None, "n": (n,), "1n": (1, n), "mn": (m, n), "m1": (m, 1), "scalar": ()}[c_shape]
    ins = ["x", w] + ([b.const("c", b.rng.normal(0, 1, c))] if c is not None else [])
    y = b.bn(b.node("Gemm", ins, transA=int(trans_a), transB=int(trans_b), alpha=alpha, beta=beta), n)
    shape = [k, m] if trans_a else [m, k]
    folded, _ = fold_and_check(b.model({"x": shape}, [y]), feeds_for(shape, dtype), dtype)
    assert ops(folded)[-1] == "Gemm"


@PROPS
@given(m=st.integers(1, 4), k=st.integers(1, 5), n=st.integers(1, 5), through=st.sampled_from(["", "add", "mul-add"]),
       dtype=DTYPES, seed=st.integers(0, 2**16))
def test_matmul_bn_folds_exactly(m, k, n, through, dtype, seed):
    b = Builder(seed, dtype)
    y = b.node("MatMul", ["x", b.const("w", b.weight((k, n), k))])
    y = b.bn(_through(b, y, through, n, 2), n)
    folded, _ = fold_and_check(b.model({"x": [m, k]}, [y]), feeds_for([m, k], dtype), dtype)
    assert ops(folded) == ["Gemm"]  # the BN shift's Add folds too: a 2-D MatMul + Add is one Gemm


@PROPS
@given(
    dims=st.integers(1, 3),
    groups=st.integers(1, 3),
    cin_g=st.integers(1, 3),
    cout_g=st.integers(1, 2),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    padded=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_bn_conv_folds_forward_where_exact(dims, groups, cin_g, cout_g, kernel, stride, dilation, bias, padded, dtype,
                                           seed):
    """Graph input → BN → Conv: forward fold when the Conv has no padding, or with padding when the BN
    shift is zero; never (BN becomes Mul+Add) with padding and a non-zero shift."""
    b = Builder(seed, dtype)
    cin, cout = cin_g * groups, cout_g * groups
    zero_shift = padded and bool(seed % 2)
    x = b.bn("x", cin, zero_shift=zero_shift)
    w = b.const("w", b.weight((cout, cin_g) + (kernel,) * dims, cin_g * kernel**dims))
    ins = [x, w] + ([b.const("b", b.rng.normal(0, 1, cout))] if bias else [])
    y = b.node("Conv", ins, group=groups, kernel_shape=[kernel] * dims, strides=[stride] * dims,
               dilations=[dilation] * dims, pads=[int(padded)] * 2 * dims)
    shape = [1, cin] + [5 if dims == 3 else 7] * dims
    folded, report = fold_and_check(b.model({"x": shape}, [y]), feeds_for(shape, dtype), dtype)
    cand = report.candidates[0]
    if padded and not zero_shift:
        assert cand.action == "replaced" and "pads its input" in cand.reason
        assert "Conv" in ops(folded) and ("Add" in ops(folded))
    else:
        assert cand.action == "folded" and cand.details["pattern"] == "BN→Conv"
        assert ops(folded) == ["Conv"]


@PROPS
@given(rank=st.integers(2, 5), channels=st.integers(1, 4), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_lone_bn_becomes_mul_add(rank, channels, dtype, seed):
    b = Builder(seed, dtype)
    y = b.bn("x", channels)
    shape = [2, channels] + [3] * (rank - 2)
    folded, report = fold_and_check(b.model({"x": shape}, [y]), feeds_for(shape, dtype), dtype)
    assert ops(folded) == ["Mul", "Add"]
    assert report.candidates[0].action == "replaced" and "graph input" in report.candidates[0].reason


def test_identity_and_zero_shift_bn_use_the_cheapest_form():
    b = Builder(3)
    y = b.bn("x", 3, zero_shift=True)  # t == 0: a Mul alone is exact
    folded, _ = fold_and_check(b.model({"x": [1, 3, 4]}, [y]), feeds_for([1, 3, 4]))
    assert ops(folded) == ["Mul"]
    b = Builder(3)
    ins = ["x"] + [b.const(p, v) for p, v in (("g", np.ones(3)), ("b", np.zeros(3)), ("m", np.zeros(3)),
                                               ("v", np.ones(3)))]
    y = b.node("BatchNormalization", ins, epsilon=0.0)
    folded, _ = fold_and_check(b.model({"x": [1, 3, 4]}, [y]), feeds_for([1, 3, 4]))
    assert ops(folded) == ["Identity"]


def test_constant_first_operands_and_bn_after_bn():
    """``c - y`` and ``c * y`` fold through; a BN right after a folded BN folds into the same Conv."""
    b = Builder(4)
    y = b.node("Conv", ["x", b.const("w", b.weight((3, 2, 3), 6))], pads=[1, 1])
    y = b.node("Sub", [b.const("c", b.rng.normal(size=(3, 1))), y])
    y = b.node("Mul", [b.const("m", b.rng.uniform(0.5, 2, size=(1, 3, 1))), y])
    y = b.bn(b.bn(y, 3), 3)
    folded, report = fold_and_check(b.model({"x": [2, 2, 6]}, [y]), feeds_for([2, 2, 6]))
    assert ops(folded) == ["Conv"] and [c.action for c in report.candidates] == ["folded", "folded"]
    assert report.candidates[0].details["pattern"] == "Conv→Sub→Mul→BN"


def test_shared_weight_is_cloned_not_corrupted():
    """Two Convs read one weight (and one bias), each followed by its own BN: both fold, each gets
    its own copy, and the results match."""
    b = Builder(5)
    w, bias = b.const("w", b.weight((4, 3, 3, 3), 27)), b.const("b", b.rng.normal(0, 1, 4))
    y1 = b.bn(b.node("Conv", ["x", w, bias], pads=[1, 1, 1, 1]), 4)
    y2 = b.bn(b.node("Conv", ["x", w, bias], strides=[2, 2]), 4)
    model = b.model({"x": [1, 3, 8, 8]}, [y1, y2])
    folded, report = fold_and_check(model, feeds_for([1, 3, 8, 8]))
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    assert len({c.input[1] for c in convs}) == 2 and len({c.input[2] for c in convs}) == 2
    assert [c.action for c in report.candidates] == ["folded", "folded"]


def test_bn_parameters_in_another_dtype_opset15():
    """Opset 15 lets the BN statistics be float32 on a float16 tensor; the fold uses the weight's dtype."""
    b = Builder(7, np.float16)
    y = b.node("Conv", ["x", b.const("w", b.weight((4, 2, 3), 6))])
    y = b.bn(y, 4, param_dtype=np.float32)
    model = b.model({"x": [1, 2, 8]}, [y], opset=15)
    folded, _ = fold_and_check(model, feeds_for([1, 2, 8], np.float16), np.float16)
    assert folded.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def test_chain_of_blocks_and_path_input(tmp_path):
    """Conv-BN-ReLU-Conv-BN with the model given as a path; the registry resolves the pass by name."""
    b = Builder(11)
    y = b.node("Relu", [b.bn(b.node("Conv", ["x", b.const("w", b.weight((6, 3, 3, 3), 27))], pads=[1] * 4), 6)])
    y = b.bn(b.node("Conv", [y, b.const("w", b.weight((6, 1, 3, 3), 9))], group=6), 6)
    model = b.model({"x": [1, 3, 8, 8]}, [y])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    folded, report = get_pass("fold-batchnorm")(str(path))
    assert ops(folded) == ["Conv", "Relu", "Conv"]
    assert report.pass_name == "fold-batchnorm" and report.summary["folded"] == 2 and report.summary["bn_left"] == 0
    assert_equivalent(model, folded, feeds_for([1, 3, 8, 8]))


def test_verify_puts_errors_in_the_summary():
    b = Builder(2)
    y = b.bn(b.node("Conv", ["x", b.const("w", b.weight((3, 2, 1, 1), 2))]), 3)
    _, report = fold_batchnorm(b.model({"x": [1, 2, 4, 4]}, [y]), verify=True)
    assert report.summary["verified"] is True
    assert 0 <= report.summary["verify_max_abs"] < 1e-5 and report.summary["verify_rtol"] == 1e-4


def test_verify_catches_a_wrong_fold(monkeypatch):
    """The self-check is real: a corrupted bias fold must be caught."""
    real = bn_math.fold_bias
    monkeypatch.setattr(bn_math, "fold_bias", lambda bias, scale, shift: real(bias, scale, shift) + 0.01)
    b = Builder(2)
    y = b.bn(b.node("Conv", ["x", b.const("w", b.weight((3, 2, 1, 1), 2))]), 3)
    with pytest.raises(VerificationError, match="differs from the original"):
        fold_batchnorm(b.model({"x": [1, 2, 4, 4]}, [y]), verify=True)


def test_bn_math_matches_the_definition():
    rng = np.random.default_rng(0)
    g, beta, mean, var = rng.uniform(0.5, 1.5, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    x = rng.normal(size=(2, 4, 3))
    s, t = bn_math.bn_affine(g, beta, mean, var, 1e-3)
    expected = g[:, None] * (x - mean[:, None]) / np.sqrt(var[:, None] + 1e-3) + beta[:, None]
    np.testing.assert_allclose(s[:, None] * x + t[:, None], expected, rtol=1e-12)
    assert bn_math.per_channel(np.ones((1, 4, 1)), 3, 4) is not None
    assert bn_math.per_channel(np.ones((4, 1)), 3, 4) is not None
    assert bn_math.per_channel(np.ones((1, 1, 3)), 3, 4) is None  # varies along the last axis
    assert bn_math.per_channel(np.ones((1, 1, 4, 1)), 3, 4) is None  # would grow the rank


def test_graph_level_fold_equals_the_model_level_pass():
    """``fold_batchnorm_graph`` (what quantize uses on its own graph) gives the same model and report."""
    from onnxsq.graph import export_like, import_graph
    from onnxsq.passes.fold_batchnorm import fold_batchnorm_graph

    b = Builder(13)
    y = b.node("Relu", [b.bn(b.node("Conv", ["x", b.const("w", b.weight((6, 3, 3, 3), 27))], pads=[1] * 4), 6)])
    y = b.bn(b.node("Relu", [y]), 6)  # after a Relu, feeding nothing foldable: becomes Mul+Add
    model = b.model({"x": [1, 3, 8, 8]}, [y])
    folded, report = fold_batchnorm(model)
    graph = import_graph(model)
    greport = fold_batchnorm_graph(graph, opset=13, types_from=model)
    assert export_like(graph, model).SerializeToString() == folded.SerializeToString()
    assert greport.summary == report.summary and report.summary["replaced"] == 1
    assert [(c.name, c.action, c.reason) for c in greport.candidates] == \
        [(c.name, c.action, c.reason) for c in report.candidates]
