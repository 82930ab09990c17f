"""A tensor that Softmax reads (directly or through shape-only ops: CTC logits, attention scores) takes its
shift by the Softmax's own error (onnxsq.passes.quantize.softmax_range)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsq.calibration import pow2
from onnxsq.calibration.stats import least_error
from onnxsq.params import params_from_model
from onnxsq.passes.quantize import QuantizeConfig, quantize
from onnxsq.passes.quantize.softmax_range import CANDIDATES, SoftmaxRead, softmax_errors, softmax_reads
from onnxsq.runtime import make_session

CLASSES = 64


def _ctc_head(seed: int = 0) -> onnx.ModelProto:
    """x [1, T, 16] → MatMul → Add (logits) → Identity →
    Reshape → Softmax, and a second MatMul whose output a Relu also reads (not only Softmax)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (16, CLASSES)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b"),
             numpy_helper.from_array(np.array([1, 8, CLASSES], np.int64), "shape"),
             numpy_helper.from_array(rng.normal(0, 1, (16, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["logits"], name="add"),
             helper.make_node("Identity", ["logits"], ["ident"], name="ident"),
             helper.make_node("Reshape", ["ident", "shape"], ["resh"], name="resh"),
             helper.make_node("Softmax", ["resh"], ["probs"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["x", "w2"], ["m2"], name="mm2"),
             helper.make_node("Softmax", ["m2"], ["p2"], name="softmax2", axis=-1),
             helper.make_node("Relu", ["m2"], ["r2"], name="relu2")]
    graph = helper.make_graph(nodes, "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 8, CLASSES]),
                               *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 8]) for n in ("p2", "r2"))],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def _calib(n: int = 8, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(0, 1, (1, 8, 16)).astype(np.float32)
        if i % 4 == 0:
            x[0, 0] *= 20.0  # one confident time step now and then: the range's top is rare
        out.append({"x": x})
    return out


def test_softmax_readers_through_shape_ops_are_found_and_only_those():
    found = softmax_reads(gs.import_onnx(_ctc_head()), ["mm", "logits", "ident", "resh", "m2"], 13)
    assert found == {t: SoftmaxRead("resh", -1, False) for t in ("logits", "ident", "resh")}
    # mm: read by the Add; m2: a Relu reads it too


def _oracle_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@pytest.mark.parametrize("shape,read", [((2, 5, 7), SoftmaxRead("z", -1, False)),
                                        ((2, 5, 7), SoftmaxRead("z", 1, True)),
                                        ((1, 1), SoftmaxRead("z", -1, False)),
                                        ((3, 4, 6), SoftmaxRead("z", 1, False))])
def test_softmax_errors_against_a_numpy_oracle(shape, read):
    rng = np.random.default_rng(3)
    values = [rng.normal(0, 4, shape).astype(np.float32) for _ in range(3)]
    lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    got = softmax_errors(values, read, lo, hi, 8, True)
    base = int(pow2.fit_shift(lo, hi, 8, True))
    assert [s for s, _ in got] == list(range(base, base + 1 + CANDIDATES))
    for shift, err in got:
        want = 0.0
        for v in values:
            z = v.astype(np.float64)
            q = np.clip(np.round(z * 2.0**shift), -128, 127) / 2.0**shift
            if read.coerce_2d:  # opset < 13: one softmax over the flattened dims from the axis on
                rows = int(np.prod(z.shape[:read.axis]))
                want += float(np.sum((_oracle_softmax(q.reshape(rows, -1)) - _oracle_softmax(z.reshape(rows, -1)))**2))
            else:
                want += float(np.sum((_oracle_softmax(q, read.axis) - _oracle_softmax(z, read.axis)) ** 2))
        assert err == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert least_error([(2, 1.0), (3, 1.0), (4, 0.5), (5, 0.5)])[0] == 4  # ties keep the coarser


def test_the_pass_takes_the_shift_of_least_softmax_error(tmp_path):
    model, calib = _ctc_head(), _calib()  # (without alignment: the shift alone; aligned below)
    on, rep_on = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, align_scales=False))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, through_readers=False,
                                                                align_scales=False))
    onnx.checker.check_model(on)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    logits = [(f["x"] @ w).reshape(1, 8, CLASSES) for f in calib[:4]]  # the first samples, as the pass measures
    lo, hi = min(float(v.min()) for v in logits), max(float(v.max()) for v in logits)
    calib_lo = min(float((f["x"] @ w).min()) for f in calib)
    calib_hi = max(float((f["x"] @ w).max()) for f in calib)
    want = least_error(softmax_errors(logits, SoftmaxRead("resh", -1, False), calib_lo, calib_hi, 8, True))[0]
    p = params_from_model(on)["logits"]
    assert int(p.shift) == want and lo < 0 < hi
    why = {c.name: c.reason for c in rep_on.candidates}
    assert "range: softmax error (read by Softmax)" in why["mm"] and "Softmax" not in why["mm2"]
    ref, errs = make_session(model.SerializeToString()), []
    for q in (on, off):
        s = make_session(q.SerializeToString())
        errs.append(sum(float(np.sum((ref.run(["probs"], f)[0] - s.run(["probs"], f)[0]) ** 2)) for f in calib))
    assert errs[0] <= errs[1] * 1.05, errs  # no worse than the squared-error choice on the whole set
    assert int(p.shift) <= int(pow2.fit_shift(calib_lo, calib_hi, 8, True)) + CANDIDATES  # clips half at most


def test_statistics_from_shards_give_the_same_softmax_shift(tmp_path):
    """``quantize --stats`` (or ``--jobs``) with the calibration data still measures the Softmax's error on the
    first samples, as one pass does."""
    from onnxsq.passes.quantize.shards import calibrate

    model, calib = _ctc_head(), _calib()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    cfg = QuantizeConfig(report_samples=0)
    one, _ = quantize(path, iter(calib), config=cfg)
    parts = [calibrate(path, list(calib), config=cfg, shard=(i, 2)) for i in range(2)]
    two, _ = quantize(path, list(calib), config=cfg, stats=parts)
    assert params_from_model(one)["logits"].shift == params_from_model(two)["logits"].shift


@pytest.mark.parametrize("confident", [True, False])
def test_alignment_weighs_a_softmax_read_domain_by_the_softmax_error(confident):
    """The logits' factor is chosen by the Softmax's own error (as their shift is): kept only where it lowers
    it on the measured samples, a product by 1 / factor before the Softmax, every scale a power of two. With
    confident rows (the range's top rare) no factor gains: the domain is refused with that reason."""
    model, calib = _ctc_head(), _calib()
    if not confident:
        calib = [{"x": f["x"] / np.maximum(1.0, np.abs(f["x"]).max(axis=-1, keepdims=True) / 2.5)} for f in calib]
    on, rep = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0))
    off, _ = quantize(model, iter(calib), config=QuantizeConfig(report_samples=0, align_scales=False))
    onnx.checker.check_model(on)
    sa = rep.summary["scale_alignment"]
    aligned = {a["tensor"]: a["factor"] for a in sa["aligned"]}
    ref, errs = make_session(model.SerializeToString()), []
    for q in (on, off):
        s = make_session(q.SerializeToString())
        errs.append(sum(float(np.sum((ref.run(["probs"], f)[0] - s.run(["probs"], f)[0]) ** 2)) for f in calib))
    if confident:
        assert "logits" not in aligned and any(r["tensor"] == "logits" for r in sa["refused"]), sa
        return
    assert "logits" in aligned, sa
    (mul,) = [n for n in on.graph.node if n.op_type == "Mul" and n.name.endswith("/align_in")
              and any(m.op_type == "Softmax" and m.input[0] == n.output[0] for m in on.graph.node)]
    inits = {t.name: numpy_helper.to_array(t) for t in on.graph.initializer}
    assert float(inits[mul.input[1]]) == pytest.approx(1 / aligned["logits"], rel=1e-6)
    for n in on.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            m, _ = np.frexp(np.asarray(inits[n.input[1]], np.float64))
            assert np.all(m == 0.5)
    assert errs[0] < errs[1], errs  # on the samples the factor was chosen on
