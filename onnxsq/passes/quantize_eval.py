"""Error of a quantized model against its float original, layer by layer, on a few samples.

For every quantized activation ``t``: ``SQNR = 10 log10(sum x**2 / sum (x - x^)**2)`` where ``x`` is
``t`` in the float model and ``x^`` the dequantized ``t`` in the quantized model (errors accumulate
through the network, as they would on the target), and the *clipped* fraction: float values beyond
the quantized range by more than half a step. For the graph outputs: SQNR and, for outputs with a
class axis (axis 1 of size > 1), the fraction of argmax-over-axis-1 positions that agree (top-1
agreement; per pixel for segmentation). Streaming: sums only, one batch in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from ..calibration import pow2
from ..calibration.collect import run_observed
from ..params import TensorQuant


@dataclass
class LayerError:
    signal: float = 0.0
    noise: float = 0.0
    clipped_n: int = 0
    count: int = 0

    @property
    def sqnr_db(self) -> float:
        return round(pow2.sqnr_db(self.signal, self.noise), 2)

    @property
    def clipped(self) -> float:
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


def evaluate(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, tensors: list[str],
             params: dict[str, TensorQuant], feeds: list[dict[str, np.ndarray]],
             progress: Callable | None = None) -> Evaluation:
    """Per-tensor and per-output errors of ``qmodel`` against ``float_model`` on ``feeds``."""
    tensors = [t for t in tensors if t in params]
    qnames = dequantized_names(qmodel, tensors)
    tensors = [t for t in tensors if t in qnames]
    ev = Evaluation(layers={t: LayerError() for t in tensors})
    outs = [o.name for o in float_model.graph.output]
    out_err = {o: LayerError() for o in outs}
    agree = {o: [0, 0] for o in outs}
    batches = [(f, next(iter(f.values())).shape[0] if f else 1) for f in feeds]
    qrun = run_observed(qmodel, [qnames[t] for t in tensors], batches)
    for (_, fvals, n), (_, qvals, _) in zip(run_observed(float_model, tensors, batches), qrun):
        k = len(tensors)
        for t, x, xq in zip(tensors, fvals[:k], qvals[:k]):
            err = ev.layers[t]
            _accumulate(err, x, xq)
            p = params[t]
            qmin, qmax = pow2.int_range(p.bits, p.signed)
            s = float(p.scale)
            err.clipped_n += int(np.count_nonzero((x > (qmax + 0.5) * s) | (x < (qmin - 0.5) * s)))
        for o, x, xq in zip(outs, fvals[k:], qvals[k:]):
            _accumulate(out_err[o], x, xq)
            if x.ndim >= 2 and x.shape[1] > 1 and x.shape == xq.shape:
                agree[o][0] += int(np.count_nonzero(np.argmax(x, axis=1) == np.argmax(xq, axis=1)))
                agree[o][1] += int(np.prod(x.shape) // x.shape[1])
        ev.samples += n
        if progress is not None:
            progress(ev.samples, sum(b for _, b in batches), "evaluate")
    ev.outputs = {o: e.sqnr_db for o, e in out_err.items()}
    ev.top1 = {o: a / b for o, (a, b) in agree.items() if b}
    return ev


def _accumulate(err: LayerError, x: np.ndarray, xq: np.ndarray) -> None:
    x64 = np.asarray(x, np.float64)
    d = x64 - np.asarray(xq, np.float64)
    # plain reductions, not BLAS dot: OpenBLAS threads spin on a busy machine and cost ~10 ms a call
    err.signal += float(np.square(x64).sum())
    err.noise += float(np.square(d).sum())
    err.count += x64.size
    if not math.isfinite(err.noise):
        err.noise = math.inf
