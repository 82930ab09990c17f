"""Run a model in onnxruntime batch by batch and fold intermediate tensors into running statistics.

The tensors to observe are added as graph outputs of a *copy* of the model, which runs with graph
optimizations off (so every named tensor exists). Per batch, each observed tensor updates its
:class:`~onnxsq.calibration.stats.TensorStats` and is dropped: memory is one batch of activations,
never the calibration set.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx

from ..errors import DataError
from ..runtime import import_ort
from .stats import TensorStats

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None", str], None]  # (samples done, total or None, stage)


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> bytes:
    """``model`` serialized with ``names`` added as graph outputs (float32, shape left open).

    The outputs are appended, serialized and removed again, so ``model`` is unchanged and no second
    copy of its weights is made (they dominate the memory of large models).
    """
    have = {o.name for o in model.graph.output}
    before = len(model.graph.output)
    for n in names:
        if n not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
            have.add(n)
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[before:]


def _session(serialized: bytes):
    """An InferenceSession from bytes, graph optimizations off (as runtime.make_session, which takes a proto)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(serialized, sess_options=opts, providers=["CPUExecutionProvider"])


def run_observed(model: onnx.ModelProto, names: list[str], batches: Iterable[tuple[dict, int]]
                 ) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray], int]]:
    """Yield ``(feed, [observed arrays in names order] + [graph outputs], samples)`` per batch."""
    session = _session(with_outputs(model, names))
    outputs = [o.name for o in model.graph.output]
    fetch = list(dict.fromkeys(list(names) + outputs))
    index = {n: i for i, n in enumerate(fetch)}
    for feed, n in batches:
        try:
            values = session.run(fetch, feed)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad feeds
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"calibration data does not fit the model: {first}") from None
        yield feed, [values[index[x]] for x in names] + [values[index[o]] for o in outputs], n


def collect_stats(model: onnx.ModelProto, names: list[str], batches: Iterable[tuple[dict, int]], *,
                  histogram: bool = False, progress: Progress | None = None, total: int | None = None,
                  keep: int = 0) -> tuple[dict[str, TensorStats], list[dict[str, np.ndarray]], int]:
    """Statistics of ``names`` over ``batches``; also the first ``keep`` samples' feeds (for the report).

    Returns ``(stats, kept feeds, samples seen)``.
    """
    stats = {n: TensorStats(histogram=histogram) for n in names}
    kept: list[dict[str, np.ndarray]] = []
    kept_n = 0
    seen = 0
    for feed, values, n in run_observed(model, names, batches):
        for name, v in zip(names, values):
            try:
                stats[name].update(v)
            except ValueError as exc:
                raise DataError(f"tensor {name!r}: {exc} on calibration data") from None
        if kept_n < keep:
            kept.append(feed)
            kept_n += n
        seen += n
        if progress is not None:
            progress(seen, total, "calibrate")
    if seen == 0:
        raise DataError("no calibration sample reached the model")
    log.info("calibrated %d tensors on %d samples", len(names), seen)
    return stats, kept, seen
