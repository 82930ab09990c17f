"""Error of a quantized model against its float original, layer by layer, on a few samples.

For every quantized activation ``t``: ``SQNR = 10 log10(sum x**2 / sum (x - x^)**2)`` where ``x`` is
``t`` in the float model and ``x^`` the dequantized ``t`` in the quantized model (errors accumulate
through the network, as they would on the target), and the *clipped* fraction: float values beyond
the quantized range by more than half a step. The caller may pass clipped fractions it already knows
(from the calibration statistics, over every calibration sample): those tensors get no counting nodes
(a min/max range that fits, the usual case, clips nothing, and counting it costs comparisons, ``Or``,
``Cast`` and a sum over every activation). For the graph outputs: SQNR and, for outputs with a class axis
(axis 1 of size > 1), the fraction of argmax-over-axis-1 positions that agree (top-1 agreement; per pixel
for segmentation). Streaming: sums only, one batch in memory.

How: both models go into ONE onnxruntime graph (the quantized one's node outputs renamed with a
prefix, the shared inputs and weights kept once), with ``ReduceSumSquare(x)``,
``ReduceSumSquare(x - x^)``, the clipped count and ``Size`` per tensor as scalar outputs. One run per
batch computes both models and every layer's sums without a single activation leaving onnxruntime;
only the graph outputs come back for SQNR and top-1. The weights are fed from numpy (no copies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...calibration import pow2
from ...calibration.collect import MISMATCH, execution_order
from ...model_io import skeleton, weight_arrays
from ...params import TensorQuant
from ...runtime import WEIGHT_BYTES, FedSession

Q_PREFIX = "onnxsq_q/"


@dataclass
class LayerError:
    signal: float = 0.0
    noise: float = 0.0
    clipped_n: int = 0
    count: int = 0
    known_clipped: float | None = None  # from the calibration statistics (all calibration samples)

    @property
    def sqnr_db(self) -> float:
        return round(pow2.sqnr_db(self.signal, self.noise), 2)

    @property
    def clipped(self) -> float:
        if self.known_clipped is not None:
            return self.known_clipped
        return self.clipped_n / self.count if self.count else 0.0


@dataclass
class Evaluation:
    layers: dict[str, LayerError] = field(default_factory=dict)
    outputs: dict[str, float] = field(default_factory=dict)  # output SQNR in dB
    top1: dict[str, float] = field(default_factory=dict)
    samples: int = 0


def dequantized_names(qmodel: onnx.ModelProto, tensors: list[str]) -> dict[str, str]:
    """Where the quantized model holds each float tensor's dequantized value.

    ``insert_qdq`` keeps produced tensors' names; a graph input's readers move to its DQ output.
    """
    inputs = {i.name for i in qmodel.graph.input}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    for t in tensors:
        if t not in inputs:
            out[t] = t
            continue
        cur = t
        for _ in range(3):  # [Clip →] QuantizeLinear → DequantizeLinear
            nxt = next((n for n in readers.get(cur, []) if n.op_type in ("Clip", "QuantizeLinear",
                                                                        "DequantizeLinear")), None)
            if nxt is None:
                break
            cur = nxt.output[0]
            if nxt.op_type == "DequantizeLinear":
                out[t] = cur
                break
    return out


def combine(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, prefix: str = Q_PREFIX) -> onnx.ModelProto:
    """One graph computing both models: ``qmodel``'s node outputs and initializers get ``prefix``;
    graph inputs (data and fed weights) keep their names and are shared where both have them."""
    shared = {i.name for i in qmodel.graph.input} - {t.name for t in qmodel.graph.initializer}

    def rename(name: str) -> str:
        return name if not name or name in shared else prefix + name

    out = onnx.ModelProto()
    out.CopyFrom(float_model)  # skeletons: small
    have = {i.name for i in out.graph.input}
    out.graph.input.extend(i for i in qmodel.graph.input if i.name not in have and i.name in shared)
    for t in qmodel.graph.initializer:
        c = out.graph.initializer.add()
        c.CopyFrom(t)
        c.name = rename(t.name)
    for n in qmodel.graph.node:
        c = out.graph.node.add()
        c.CopyFrom(n)
        _rename_node(c, rename, prefix)
    out.graph.output.extend(helper.make_tensor_value_info(rename(o.name), o.type.tensor_type.elem_type, None)
                            for o in qmodel.graph.output)
    versions = {o.domain: o for o in out.opset_import}
    for o in qmodel.opset_import:
        if o.domain in versions:
            versions[o.domain].version = max(versions[o.domain].version, o.version)
        else:
            out.opset_import.append(o)
    return out


def _rename_node(node: onnx.NodeProto, rename: Callable[[str], str], prefix: str) -> None:
    """``node``'s name, inputs and outputs renamed, and every name inside its subgraphs (If, Loop, Scan
    bodies: their outer-scope references follow the outer names, and their own names must not repeat the
    float model's copy of the same body)."""
    node.name = prefix + node.name if node.name else ""
    node.input[:] = [rename(i) for i in node.input]
    node.output[:] = [rename(o) for o in node.output]
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                  a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
            g.name = prefix + g.name
            for v in (*g.input, *g.output, *g.value_info):
                v.name = rename(v.name)
            for t in g.initializer:
                t.name = rename(t.name)
            for inner in g.node:
                _rename_node(inner, rename, prefix)


def _error_nodes(model: onnx.ModelProto, t: str, tq: str, lo: float, hi: float, i: int, count_clipped: bool = True
                 ) -> list[str]:
    """Scalar outputs [signal, noise(, clipped, size)] comparing float ``t`` with dequantized ``tq``."""
    b = f"onnxsq_err_{i}"
    outs = [f"{b}_signal", f"{b}_noise", f"{b}_clipped", f"{b}_size"]
    if not count_clipped:
        model.graph.node.extend([
            helper.make_node("ReduceSumSquare", [t], [outs[0]], name=f"{b}_Signal", keepdims=0),
            helper.make_node("Sub", [t, tq], [f"{b}_diff"], name=f"{b}_Sub"),
            helper.make_node("ReduceSumSquare", [f"{b}_diff"], [outs[1]], name=f"{b}_Noise", keepdims=0)])
        model.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, []) for o in outs[:2])
        return outs[:2]
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(lo, np.float32), f"{b}_lo"),
                                    onnx.numpy_helper.from_array(np.array(hi, np.float32), f"{b}_hi")])
    model.graph.node.extend([
        helper.make_node("ReduceSumSquare", [t], [outs[0]], name=f"{b}_Signal", keepdims=0),
        helper.make_node("Sub", [t, tq], [f"{b}_diff"], name=f"{b}_Sub"),
        helper.make_node("ReduceSumSquare", [f"{b}_diff"], [outs[1]], name=f"{b}_Noise", keepdims=0),
        helper.make_node("Greater", [t, f"{b}_hi"], [f"{b}_above"], name=f"{b}_Above"),
        helper.make_node("Less", [t, f"{b}_lo"], [f"{b}_below"], name=f"{b}_Below"),
        helper.make_node("Or", [f"{b}_above", f"{b}_below"], [f"{b}_out"], name=f"{b}_Or"),
        helper.make_node("Cast", [f"{b}_out"], [f"{b}_outn"], name=f"{b}_Cast", to=TensorProto.INT32),
        helper.make_node("ReduceSum", [f"{b}_outn"], [outs[2]], name=f"{b}_Clipped", keepdims=0),
        helper.make_node("Size", [t], [outs[3]], name=f"{b}_Size"),
    ])
    types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64)
    model.graph.output.extend(helper.make_tensor_value_info(o, ty, []) for o, ty in zip(outs, types))
    return outs


def evaluate(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, tensors: list[str],
             params: dict[str, TensorQuant], feeds: list[dict[str, np.ndarray]],
             progress: Callable | None = None, *, float_weights: Mapping[str, np.ndarray] | None = None,
             q_weights: Mapping[str, np.ndarray] | None = None,
             clipped: Mapping[str, float] | None = None) -> Evaluation:
    """Per-tensor and per-output errors of ``qmodel`` against ``float_model`` on ``feeds``.

    With ``float_weights`` / ``q_weights`` the models are skeletons fed with those arrays
    (:func:`onnxsq.calibration.collect.runnable`); otherwise they are split here. ``clipped``: known
    clipped fractions (not counted again).
    """
    clipped = dict(clipped or {})
    if float_weights is None:
        float_model, float_weights = skeleton(float_model, min_bytes=WEIGHT_BYTES), weight_arrays(float_model)
    if q_weights is None:
        qmodel, q_weights = skeleton(qmodel, min_bytes=WEIGHT_BYTES), weight_arrays(qmodel)
    tensors = [t for t in tensors if t in params]
    qnames = dequantized_names(qmodel, tensors)
    tensors = [t for t in tensors if t in qnames]
    outs = [o.name for o in float_model.graph.output]
    merged = combine(float_model, qmodel)
    tensors = execution_order(float_model, tensors)
    results = list(merged.graph.output)
    del merged.graph.output[:]  # the error scalars first, in layer order
    err_outs = []
    inputs = {x.name for x in merged.graph.input}
    for i, t in enumerate(tensors):
        p = params[t]
        qmin, qmax = pow2.int_range(p.bits, p.signed)
        s = float(p.scale)
        tq = qnames[t] if qnames[t] in inputs else Q_PREFIX + qnames[t]
        err_outs.append(_error_nodes(merged, t, tq, (qmin - 0.5) * s, (qmax + 0.5) * s, i, t not in clipped))
    merged.graph.output.extend(results)
    session = FedSession(merged.SerializeToString(), {**float_weights, **q_weights}, mismatch=MISMATCH, spin=False)
    fetch = outs + [Q_PREFIX + o for o in outs] + [o for e in err_outs for o in e]
    where = np.cumsum([2 * len(outs)] + [len(e) for e in err_outs]).tolist()  # each tensor's first scalar
    ev = Evaluation(layers={t: LayerError() for t in tensors})
    out_err = {o: LayerError() for o in outs}
    agree = {o: [0, 0] for o in outs}
    total = sum(next(iter(f.values())).shape[0] if f else 1 for f in feeds)
    k = len(outs)
    for feed in feeds:
        values = session.run(fetch, feed)
        for j, t in enumerate(tensors):
            _add_scalars(ev.layers[t], values[where[j]: where[j] + len(err_outs[j])])
        for o, x, xq in zip(outs, values[:k], values[k:2 * k]):
            _accumulate(out_err[o], x, xq)
            if x.ndim >= 2 and x.shape[1] > 1 and x.shape == xq.shape:
                agree[o][0] += int(np.count_nonzero(np.argmax(x, axis=1) == np.argmax(xq, axis=1)))
                agree[o][1] += int(np.prod(x.shape) // x.shape[1])
        ev.samples += next(iter(feed.values())).shape[0] if feed else 1
        if progress is not None:
            progress(ev.samples, total, "evaluate")
    for t, frac in clipped.items():
        if t in ev.layers:
            ev.layers[t].known_clipped = frac
    ev.outputs = {o: e.sqnr_db for o, e in out_err.items()}
    ev.top1 = {o: a / b for o, (a, b) in agree.items() if b}
    return ev


def _add_scalars(err: LayerError, got: list[np.ndarray]) -> None:
    """One batch's error scalars of a tensor: sum x**2, sum (x - x^)**2 and, when counted, clipped and size."""
    err.signal += float(got[0])
    err.noise += float(got[1])
    if len(got) == 4:
        err.clipped_n += int(got[2])
        err.count += int(got[3])
    if not math.isfinite(err.noise):
        err.noise = math.inf


def _accumulate(err: LayerError, x: np.ndarray, xq: np.ndarray) -> None:
    x64 = np.asarray(x, np.float64)
    d = x64 - np.asarray(xq, np.float64)
    # plain reductions, not BLAS dot: OpenBLAS threads spin on a busy machine and cost ~10 ms a call
    err.signal += float(np.square(x64).sum())
    err.noise += float(np.square(d).sum())
    err.count += x64.size
    if not math.isfinite(err.noise):
        err.noise = math.inf
