"""collect: in-graph (reduced) statistics equal numpy's; weights fed from numpy; the combined evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxsq.calibration import pow2
from onnxsq.calibration.collect import (
    FedSession,
    add_stat_nodes,
    collect_stats,
    run_observed,
    runnable,
)
from onnxsq.calibration.stats import TensorStats
from onnxsq.errors import DataError
from onnxsq.graph import copy_without_graph, import_graph
from onnxsq.model_io import skeleton, weight_arrays
from onnxsq.params import TensorQuant
from onnxsq.passes.quantize.eval import evaluate
from onnxsq.passes.quantize.insert import insert_qdq
from onnxsq.runtime import make_session

NAMES = ["c1", "r1", "c2", "a", "ra", "p", "r3", "logits"]


@pytest.fixture
def net():
    from tests.passes.test_quantize import build_net

    return build_net()


def _batches(count=7, bs=2, seed=3):
    rng = np.random.default_rng(seed)
    return [({"input": rng.standard_normal((bs, 3, 8, 8)).astype(np.float32)}, bs) for _ in range(count)]


def test_reduced_statistics_equal_numpy_statistics(net):
    reduced, kept, seen = collect_stats(net, NAMES, _batches(), keep=3)
    assert seen == 14 and len(kept) == 2  # whole batches until 3 samples are kept
    oracle = {n: TensorStats() for n in NAMES}
    for _, values, _ in run_observed(net, NAMES, _batches(), optimize=True):  # the arrays themselves, into numpy
        for n, v in zip(NAMES, values):
            oracle[n].update(v)
    for n in NAMES:
        got, want = reduced[n].to_dict(), oracle[n].to_dict()
        assert got == want, n  # min/max are exact, so equality is exact


def test_relu_outputs_get_no_reduce_min(net):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(net)
    relu = {o for n in m.graph.node if n.op_type == "Relu" for o in n.output}
    assert relu & set(NAMES) and set(NAMES) - relu
    outs = add_stat_nodes(m, NAMES)
    mins = {n.input[0] for n in m.graph.node if n.op_type == "ReduceMin"}
    maxs = {n.input[0] for n in m.graph.node if n.op_type == "ReduceMax"}
    assert maxs == set(NAMES)
    assert mins == set(NAMES) - relu
    assert all((outs[t][0] == "") == (t in relu) for t in NAMES)


def test_histogram_path_feeds_weights_from_numpy(net):
    sk, w = skeleton(net, min_bytes=64), weight_arrays(net, min_bytes=64)
    assert w and all(i.name not in w for i in sk.graph.initializer)
    full, _, _ = collect_stats(net, NAMES, _batches(), histogram=True)
    fed, _, _ = collect_stats(sk, NAMES, _batches(), histogram=True, weights=w)
    for n in NAMES:
        assert fed[n].to_dict() == full[n].to_dict()
    assert full["r1"].zeros > 0  # exact zeros are counted with the histogram


def test_runnable_shares_the_graph_arrays(net):
    graph = import_graph(net)
    for t in graph.tensors().values():
        getattr(t, "values", None)  # load the lazy constants, as quantize does
    sk, w = runnable(graph, copy_without_graph(net), min_bytes=64)
    consts = {t.name: t for t in graph.tensors().values() if hasattr(t, "values") and t.name in w}
    assert set(consts) == set(w) and all(consts[k].values is w[k] for k in w)
    x = _batches(1)[0][0]
    np.testing.assert_array_equal(FedSession(sk, w).run(["logits"], x)[0], make_session(net).run(["logits"], x)[0])


def test_nan_inside_the_network_is_a_data_error(net):
    bad = {"input": np.full((1, 3, 8, 8), np.float32(3e38))}
    with pytest.raises(DataError, match="inf or nan"):
        collect_stats(net, ["r1"], [(bad, 1)])


def test_combined_evaluation_equals_numpy_oracle(net):
    stats, kept, _ = collect_stats(net, NAMES[:-1], _batches(4, 1), keep=4)
    params = {}
    for n in NAMES[:-1]:
        st = stats[n]
        signed = not st.nonnegative
        shift = pow2.fit_shift(min(st.min, 0.0), st.max, 8, signed) + 1  # one finer: some clipping
        params[n] = TensorQuant(n, "activation", 8, signed, int(shift), None, (st.min, st.max), "test")
    q = insert_qdq(net, params)
    ev = evaluate(net, q, NAMES[:-1], params, kept)
    fvals = [v for _, v, _ in run_observed(net, NAMES[:-1], [(f, 1) for f in kept])]
    qvals = [v for _, v, _ in run_observed(q, NAMES[:-1], [(f, 1) for f in kept])]
    for i, n in enumerate(NAMES[:-1]):
        x = np.concatenate([v[i].ravel() for v in fvals]).astype(np.float64)
        xq = np.concatenate([v[i].ravel() for v in qvals]).astype(np.float64)
        want = round(pow2.sqnr_db(float(np.sum(x * x)), float(np.sum((x - xq) ** 2))), 2)
        assert ev.layers[n].sqnr_db == pytest.approx(want, abs=0.02), n
        qmin, qmax = pow2.int_range(8, params[n].signed)
        s = float(params[n].scale)
        assert ev.layers[n].clipped == np.mean((x > (qmax + 0.5) * s) | (x < (qmin - 0.5) * s))
    fo = np.concatenate([v[-1] for v in fvals]).astype(np.float64)
    qo = np.concatenate([v[-1] for v in qvals]).astype(np.float64)
    assert ev.outputs["logits"] == pytest.approx(pow2.sqnr_db(float(np.sum(fo ** 2)), float(np.sum((fo - qo) ** 2))),
                                                 abs=0.01)
    assert ev.top1["logits"] == np.mean(np.argmax(fo, 1) == np.argmax(qo, 1))
    assert ev.samples == 4 and not math.isnan(ev.layers["r1"].noise)


@pytest.mark.parametrize("histogram", [False, True])
def test_channel_means_in_the_calibration_pass(net, histogram):
    from onnxsq.calibration.stats import ChannelMean

    means = {"r1": ChannelMean(1, 4), "input": ChannelMean(1, 4), "f": ChannelMean(1, 2)}
    stats, _, _ = collect_stats(net, ["r1", "p"], _batches(), histogram=histogram, means=means)
    assert set(stats) == {"r1", "p"}  # means alone add no range statistics
    arrays = {n: [] for n in means}
    for _, values, _ in run_observed(net, list(means), _batches()):
        for n, v in zip(means, values):
            arrays[n].append(np.array(v, copy=True))  # onnxruntime may reuse the buffers
    for n, m in means.items():
        allv = np.concatenate(arrays[n]).astype(np.float64)
        np.testing.assert_allclose(m.mean, allv.mean(axis=tuple(i for i in range(allv.ndim) if i != 1)),
                                   rtol=1e-5, atol=1e-6)


def test_channel_means_with_opset_18_axes_input():
    from onnx import TensorProto, helper

    from onnxsq.calibration.stats import ChannelMean

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    means = {"y": ChannelMean(1, 3)}
    collect_stats(model, ["y"], [({"x": x}, 2)], means=means)
    np.testing.assert_allclose(means["y"].mean, np.maximum(x, 0).mean(axis=(0, 2)), rtol=1e-6)
