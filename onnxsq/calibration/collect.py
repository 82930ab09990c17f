"""Run a model in onnxruntime batch by batch and fold intermediate tensors into running statistics.

Memory: the model runs as a *skeleton* (:func:`onnxsq.model_io.skeleton`: its large weights become
graph inputs) and the weights are fed at every run from the caller's numpy arrays, which onnxruntime
reads in place — the session holds no second copy of them. Sessions run with graph optimizations off,
so every named tensor exists, and their threads do not spin between operators (see
:func:`onnxsq.runtime.make_session`).

Two ways to observe a tensor ``t``:

- *reduced* (no histogram): ``ReduceMin`` (not for ReLU outputs), ``ReduceMax`` and ``Size`` nodes are
  added to the graph,
  so only scalars leave onnxruntime, which keeps reusing the activation buffers; per batch
  :meth:`TensorStats.update_reduced` gets exactly what :meth:`TensorStats.update` would compute (a ReLU
  output's minimum is its bound, 0, which it reaches wherever any input is <= 0).
  (onnxruntime's ReduceMin/Max may skip a nan; the graph outputs, where a nan ends up, are checked.
  An exact-zero count and an in-graph nan check cost about 40% more time, for nothing the minmax
  and ema estimators use.)
- *sampled* (histogram estimators, large tensors): the reduced statistics above, exact, plus a strided
  subsample of ``t`` taken in the graph (:mod:`onnxsq.calibration.sampling`), which alone is binned.
- *whole* (histogram estimators, small tensors or unknown shapes): ``t`` becomes a graph output and each
  batch's array updates the histogram, then is dropped: memory is one batch of activations, never the
  calibration set.

Per-channel means (bias correction's input statistics, :class:`~onnxsq.calibration.stats.ChannelMean`)
are observed in the graph in every case: a ``ReduceMean`` over every axis but the channel's plus a
``Size``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from ..errors import DataError
from ..graph import export_like
from ..model_io import skeleton, weight_arrays
from ..runtime import WEIGHT_BYTES, FedSession
from .sampling import add_sample_nodes, sample_output, sample_strides
from .session import CalibrationSession
from .stats import ChannelMean, TensorStats

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None", str], None]  # (samples done, total or None, stage)
STAT_SUFFIXES = ("min", "max", "size")
OPTIMIZE = True  # calibrate on onnxruntime's optimized graph (:mod:`.session`); off: the fed skeleton as it is
MISMATCH = "calibration data does not fit the model"


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> bytes:
    """``model`` serialized with ``names`` added as graph outputs (float32, shape left open).

    The outputs are appended, serialized and removed again, so ``model`` is unchanged and no second
    copy of its weights is made (they dominate the memory of large models).
    """
    have = {o.name for o in model.graph.output}
    before = len(model.graph.output)
    for n in names:
        if n not in have:
            model.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
            have.add(n)
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[before:]


def runnable(graph: gs.Graph, original: onnx.ModelProto, *, min_bytes: int = WEIGHT_BYTES
             ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``graph`` as ``(skeleton, weights)``: constants of ``min_bytes`` or more become graph inputs and
    are returned as the very arrays ``graph`` holds (no copy); ``graph`` itself is unchanged."""
    g = graph.copy()  # tensors are copied, their numpy values shared
    weights: dict[str, np.ndarray] = {}
    for t in list(g.tensors().values()):
        if isinstance(t, gs.Constant) and t.values.nbytes >= min_bytes and not any(o is t for o in g.outputs):
            weights[t.name] = t.values
            fed = gs.Variable(t.name, dtype=t.values.dtype, shape=list(t.values.shape))
            for reader in list(t.outputs):
                for k, i in enumerate(reader.inputs):
                    if i is t:
                        reader.inputs[k] = fed
            g.inputs.append(fed)
    return export_like(g, original), weights


def _split(model: onnx.ModelProto, weights: Mapping[str, np.ndarray] | None
           ) -> tuple[onnx.ModelProto, Mapping[str, np.ndarray]]:
    if weights is not None:
        return model, weights
    return skeleton(model, min_bytes=WEIGHT_BYTES), weight_arrays(model, min_bytes=WEIGHT_BYTES)


def run_observed(model: onnx.ModelProto, names: list[str], batches: Iterable[tuple[dict, int]], *,
                 weights: Mapping[str, np.ndarray] | None = None, threads: int = 0, optimize: bool = False
                 ) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray], int]]:
    """Yield ``(feed, [observed arrays in names order] + [graph outputs], samples)`` per batch.

    ``weights``: when given, ``model`` is a skeleton and these arrays feed its weight inputs.
    ``optimize``: on onnxruntime's optimized graph, as :func:`collect_stats` runs (the same values); off
    (the default), the graph as it is (a QDQ model stays simulated in float).
    """
    model, weights = _split(model, weights)
    outputs = [o.name for o in model.graph.output]
    with_names = onnx.ModelProto()
    with_names.CopyFrom(model)  # a skeleton: small
    session = _session(with_names, names, weights, threads, optimize)
    fetch = list(dict.fromkeys(list(names) + outputs))
    index = {n: i for i, n in enumerate(fetch)}
    for feed, n, *_ in batches:
        values = session.run(fetch, feed)
        yield feed, [values[index[x]] for x in names] + [values[index[o]] for o in outputs], n


def add_stat_nodes(model: onnx.ModelProto, names: list[str], prefix: str = "onnxsq_stat") -> dict[str, list[str]]:
    """Append to ``model`` (in place) the scalar statistics of each float tensor in ``names`` as graph
    outputs; returns ``{name: [min, max, size output names]}``.

    A ``Relu`` output gets no ``ReduceMin`` (its min output name is ``""``): it is never negative,
    which is all a minimum decides for it, so its lower bound is recorded as 0 (one pass over the
    tensor fewer; most observed tensors of a CNN are ReLU outputs).
    """
    g = model.graph
    relu = {o for n in g.node if n.op_type == "Relu" for o in n.output}
    out: dict[str, list[str]] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    for i, t in enumerate(execution_order(model, names)):
        base = f"{prefix}_{i}"
        outs = [f"{base}_{s}" for s in STAT_SUFFIXES]
        nodes = [helper.make_node("ReduceMax", [t], [outs[1]], name=f"{base}_ReduceMax", keepdims=0),
                 helper.make_node("Size", [t], [outs[2]], name=f"{base}_Size")]
        if t in relu:
            outs[0] = ""
        else:
            nodes.insert(0, helper.make_node("ReduceMin", [t], [outs[0]], name=f"{base}_ReduceMin", keepdims=0))
        after[t] = nodes
        types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64)
        g.output.extend(helper.make_tensor_value_info(o, ty, []) for o, ty in zip(outs, types) if o)
        out[t] = outs
    interleave(model, after)
    return out


def add_mean_nodes(model: onnx.ModelProto, means: Mapping[str, ChannelMean], prefix: str = "onnxsq_mean"
                   ) -> dict[str, list[str]]:
    """Append (in place) each tensor's per-channel mean over one batch and its size as graph outputs;
    returns ``{name: [mean, size output names]}``."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    out: dict[str, list[str]] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    for i, t in enumerate(execution_order(model, list(means))):
        base = f"{prefix}_{i}"
        outs = [f"{base}_mean", f"{base}_size"]
        axes = list(means[t].reduce_axes)
        if opset >= 18:  # axes became an input
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), f"{base}_axes"))
            mean = helper.make_node("ReduceMean", [t, f"{base}_axes"], [outs[0]], name=f"{base}_ReduceMean", keepdims=0)
        else:
            mean = helper.make_node("ReduceMean", [t], [outs[0]], name=f"{base}_ReduceMean", axes=axes, keepdims=0)
        after[t] = [mean, helper.make_node("Size", [t], [outs[1]], name=f"{base}_Size")]
        model.graph.output.extend([helper.make_tensor_value_info(outs[0], TensorProto.FLOAT, None),
                                   helper.make_tensor_value_info(outs[1], TensorProto.INT64, [])])
        out[t] = outs
    interleave(model, after)
    return out


def interleave(model: onnx.ModelProto, after: Mapping[str, list[onnx.NodeProto]]) -> None:
    """Put ``after[t]`` right behind the node producing ``t`` (graph inputs: first).

    So the graph reads in execution order and nothing forces an observed activation to outlive its
    readers. It pays where the session runs nodes in graph order (``FedSession``'s default): on the
    ResNet-50-sized model calibration peaked at +142 MB that way, +204 MB in onnxruntime's default
    order (memory pattern off; with it on, more).
    """
    nodes = list(model.graph.node)
    del model.graph.node[:]
    for t in [t for t in after if t not in {o for n in nodes for o in n.output}]:
        model.graph.node.extend(after[t])
    for n in nodes:
        model.graph.node.append(n)
        for o in n.output:
            model.graph.node.extend(after.get(o, ()))


def execution_order(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """``names`` in the order of their producers in ``model`` (graph inputs first)."""
    pos = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    return sorted(dict.fromkeys(names), key=lambda t: pos.get(t, -1))


def positioned(batches: Iterable[tuple]) -> Iterator[tuple[dict, int, int]]:
    """``(feed, samples, position)`` triples: pairs ``(feed, samples)`` get positions 0, 1, 2, ..."""
    for i, b in enumerate(batches):
        yield (b[0], b[1], b[2] if len(b) > 2 else i)


def collect_stats(model: onnx.ModelProto, names: list[str], batches: Iterable[tuple], *,
                  histogram: bool = False, progress: Progress | None = None, total: int | None = None,
                  keep: int = 0, weights: Mapping[str, np.ndarray] | None = None,
                  means: Mapping[str, ChannelMean] | None = None, allow_empty: bool = False, threads: int = 0
                  ) -> tuple[dict[str, TensorStats], list[dict[str, np.ndarray]], int]:
    """Statistics of ``names`` over ``batches``; also the first ``keep`` samples' feeds (for the report).

    ``batches``: ``(feed, samples)`` or ``(feed, samples, position)`` (see :mod:`onnxsq.calibration.units`).

    ``weights``: when given, ``model`` is a skeleton (see :func:`runnable`) fed with these arrays.
    ``means``: per-channel means updated in place, in the same pass (any tensors, in ``names`` or not).
    ``allow_empty``: no batch at all is no error (a shard beyond the end of the set). ``threads``:
    onnxruntime's intra-op threads (0: its default).
    Returns ``(stats, kept feeds, samples seen)``.
    """
    stats = {n: TensorStats(histogram=histogram) for n in names}
    kept: list[dict[str, np.ndarray]] = []
    kept_n = 0
    seen = 0
    for feed, n in _observe(model, names, positioned(batches), histogram, weights, stats, dict(means or {}), threads):
        if kept_n < keep:
            kept.append(feed)
            kept_n += n
        seen += n
        if progress is not None:
            progress(seen, total, "calibrate")
    if seen == 0 and not allow_empty:
        raise DataError("no calibration sample reached the model" + _fixed_batch_hint(model, weights or {}))
    log.info("calibrated %d tensors on %d samples", len(names), seen)
    return stats, kept, seen


def _observe(model: onnx.ModelProto, names: list[str], batches: Iterator[tuple[dict, int, int]], histogram: bool,
             weights: Mapping[str, np.ndarray] | None, stats: dict[str, TensorStats],
             means: dict[str, ChannelMean], threads: int = 0) -> Iterator[tuple[dict, int]]:
    model, weights = _split(model, weights)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)  # a skeleton: small
    strides = sample_strides(augmented, names) if histogram else {}
    whole = [n for n in names if strides.get(n) == 1]  # fetched and binned whole
    reduced = [n for n in names if strides.get(n) != 1]
    outs = add_stat_nodes(augmented, reduced)
    sampled = {n: strides[n] for n in reduced if n in strides}
    interleave(augmented, add_sample_nodes(augmented, sampled))
    samples = {n: sample_output(i) for i, n in enumerate(sampled)}
    mean_outs = add_mean_nodes(augmented, means) if means else {}
    session = _session(augmented, whole, weights, threads)
    fetch = [o for n in reduced for o in outs[n] if o] + [samples[n] for n in sampled]
    mean_fetch = [o for n in means for o in mean_outs[n]]
    results = [o.name for o in model.graph.output]
    for feed, n, position in batches:
        values = session.run(fetch + whole + mean_fetch + results, feed)
        got = dict(zip(fetch + whole, values))
        for name in reduced:
            lo, hi, size = outs[name]
            bmin = float(got[lo]) if lo else 0.0  # a ReLU output: never negative (see add_stat_nodes)
            if name in samples:
                _update(stats[name], name, "update_sampled", int(got[size]), bmin, float(got[hi]), got[samples[name]],
                        position)
            else:
                _update(stats[name], name, "update_reduced", int(got[size]), bmin, float(got[hi]), position)
        for name in whole:
            _update(stats[name], name, "update", got[name], position)
        at = len(fetch) + len(whole)
        for i, name in enumerate(means):
            mean, size = values[at + 2 * i: at + 2 * i + 2]
            per = int(size) // max(int(np.size(mean)), 1)  # values per channel in this batch
            _update(means[name], name, "update_sum", np.asarray(mean, np.float64) * per, per, position)
        for o, v in zip(results, values[at + len(mean_fetch):]):
            # ReduceMin/Max may skip a nan; a nan inside the network reaches its outputs
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise DataError(f"model output {o!r} holds inf or nan on calibration data")
        yield feed, n


def _fixed_batch_hint(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> str:
    """Why none may have: a static batch N > 1 takes exactly N samples per run (fewer are dropped). Only
    the data inputs count (not initializers, nor a skeleton's weight inputs)."""
    inits = {i.name for i in model.graph.initializer} | set(weights)
    dims = [i.type.tensor_type.shape.dim for i in model.graph.input if i.name not in inits]
    fixed = {d[0].dim_value for d in dims if d and d[0].HasField("dim_value")}
    if len(fixed) == 1 and (n := fixed.pop()) > 1:
        return f": its batch size is fixed at {n} (each run takes exactly {n} samples): give at least {n}"
    return ""


def _session(model: onnx.ModelProto, outputs: list[str], weights: Mapping[str, np.ndarray], threads: int,
             optimize: bool = True) -> Any:
    """The session of :func:`_observe`: ``model`` (a skeleton, ``outputs`` added as graph outputs) over
    ``weights``; onnxruntime's optimized graph when ``optimize`` and :data:`OPTIMIZE`."""
    if not (optimize and OPTIMIZE):
        return FedSession(with_outputs(model, outputs), weights, in_node_order=True, mismatch=MISMATCH,
                          intra_op_threads=threads, spin=False)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs
                              if n not in have)
    try:
        return CalibrationSession(model, weights, mismatch=MISMATCH, intra_op_threads=threads)
    except Exception as exc:  # noqa: BLE001 - an optimizer onnxruntime cannot apply: the same values unoptimized
        log.info("calibrating on the unoptimized graph: onnxruntime's optimized session failed (%s)", exc)
        return FedSession(model.SerializeToString(), weights, in_node_order=True, mismatch=MISMATCH,
                          intra_op_threads=threads, spin=False)


def _update(stat: Any, name: str, method: str, *args: Any) -> None:
    """``stat.method(*args)``; a ValueError (inf/nan, a shape change) becomes a DataError naming the tensor."""
    try:
        getattr(stat, method)(*args)
    except ValueError as exc:
        raise DataError(f"tensor {name!r}: {exc} on calibration data") from None
