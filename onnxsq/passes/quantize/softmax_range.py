"""The shift of a tensor that Softmax reads, by the error of the Softmax itself.

``softmax(z)`` along an axis is decided by each row's largest entries, which are rare in the tensor's
histogram: a squared-error choice on ``z`` happily clips them (PP-OCRv6's recognizer: CTC logits and
attention scores clipped above 16, the recognized characters' probabilities moved), while a whole-range
choice rounds the many moderate rows coarsely. So for a tensor every reader of which is a Softmax (directly
or through shape-only ops: Identity, Reshape, Transpose, Squeeze, Unsqueeze, Flatten), the shift is the one
among the min/max-fitting shift and :data:`CANDIDATES` finer one(s) with the least
``sum ||softmax(Q_s(z)) - softmax(z)||^2`` over the first calibration samples (:data:`SAMPLES`), measured
on the Softmax's own input (the same values; shape ops move them), along its axis (opset < 13: the 2-D
coercion at ``axis``). Signed when the tensor has negatives. Ties keep the coarser shift; without samples
the min/max-fitting shift (nothing clipped). :mod:`.align` weighs a factor for such a tensor by the same
error (:func:`softmax_nsr`, on the values kept from this measurement) and, once aligned, the shift is chosen
again on those values times the factor (:func:`realigned_shifts`).

Why one finer shift at most: the error is measured on a few samples, while the range comes from all of
them. With more candidates the choice fits those few: a synthetic CTC head whose confident rows come now
and then took a shift two steps finer on its first four samples and then clipped the confident rows of
the fifth (Softmax error 0.87 against 0.07; tests/passes/test_quantize_softmax_range.py). One step finer
clips at most the top half of the range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...calibration import pow2
from ...calibration.stats import least_error

SAMPLES = 8  # calibration samples the candidates are measured on (the report's, or kept for this)
CANDIDATES = 1  # finer shifts tried beyond the min/max-fitting one (see the module docstring)
_SHAPE_ONLY = frozenset({"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})


@dataclass(frozen=True)
class SoftmaxRead:
    """The Softmax a tensor feeds: its input (the same values, maybe reshaped) and how it reduces."""

    softmax_input: str
    axis: int
    coerce_2d: bool  # opset < 13: softmax over the flattened dims from ``axis`` on


def softmax_read(tensor, outputs: set[str], opset: int, depth: int = 0) -> SoftmaxRead | None:
    """The :class:`SoftmaxRead` of ``tensor`` (an onnx-graphsurgeon variable) when every reader is one Softmax
    or shape-only ops leading only to it; else None."""
    readers = list(tensor.outputs)
    if len(readers) != 1 or tensor.name in outputs or depth > 8:
        return None
    node = readers[0]
    if node.op == "Softmax":
        default = -1 if opset >= 13 else 1
        return SoftmaxRead(node.inputs[0].name, int(node.attrs.get("axis", default)), opset < 13)
    if node.op in _SHAPE_ONLY and node.outputs:
        return softmax_read(node.outputs[0], outputs, opset, depth + 1)
    return None


def _softmax(z: np.ndarray, read: SoftmaxRead) -> np.ndarray:
    shape = z.shape
    if read.coerce_2d:
        axis = read.axis % max(z.ndim, 1)
        z = z.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
        axis = 1
    else:
        axis = read.axis
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).reshape(shape)


def softmax_errors(values: list[np.ndarray], read: SoftmaxRead, lo: float, hi: float, bits: int,
                   signed: bool, factor: float = 1.0, refs: list[np.ndarray] | None = None
                   ) -> list[tuple[int, float]]:
    """``(shift, sum of squared Softmax-output errors over values)`` for the min/max-fitting shift and
    :data:`CANDIDATES` finer one(s); ``values`` hold ``factor`` times the Softmax's input (``refs``: its
    Softmax, where known)."""
    base = int(pow2.fit_shift(min(lo, 0.0) if signed else 0.0, max(hi, 0.0), bits, signed))
    if refs is None:
        refs = [_softmax(v.astype(np.float64) / factor, read) for v in values]
    return [(shift, _error_at(values, refs, read, shift, bits, signed, factor))
            for shift in range(base, min(base + CANDIDATES, pow2.MAX_SHIFT) + 1)]


def _error_at(values: list[np.ndarray], refs: list[np.ndarray], read: SoftmaxRead, shift: int, bits: int,
              signed: bool, factor: float) -> float:
    """``sum ||softmax(Q_shift(v) / factor) - ref||^2`` over ``values`` (``refs``: their Softmax)."""
    qmin, qmax = pow2.int_range(bits, signed)
    err = 0.0
    for v, ref in zip(values, refs):
        q = np.clip(np.round(np.ldexp(v.astype(np.float64), shift)), qmin, qmax) * np.ldexp(1.0, -shift)
        err += float(np.sum(np.square(_softmax(q / factor, read) - ref)))
    return err


@dataclass(frozen=True)
class Measured:
    """A Softmax-read tensor as :func:`choose_softmax_shifts` measured it (unaligned): the Softmax's input on
    the samples, its Softmax and power, and the tensor's calibrated range and sign."""

    values: list
    refs: list
    power: float
    lo: float
    hi: float
    signed: bool


def _measured(values: list[np.ndarray], read: SoftmaxRead, st) -> Measured:
    vs = [v.astype(np.float64) for v in values]
    refs = [_softmax(v, read) for v in vs]
    power = max(sum(float(np.sum(np.square(r))) for r in refs), 1e-30)
    return Measured(vs, refs, power, float(st.min), float(st.max), not st.nonnegative)


def softmax_nsr(ctx, t: str, factor: float, shift: int | None = None) -> tuple[int, float] | None:
    """(shift, Softmax-output error over its power) of ``factor`` times ``t`` on the samples its shift was
    chosen on (:mod:`.align` weighs a factor by it): at ``shift``, or at the least-error one of
    :func:`softmax_errors`; None where ``t`` was not measured."""
    m, read = ctx.softmax_values.get(t), ctx.softmax.get(t)
    if m is None or read is None:
        return None
    scaled = [v * factor for v in m.values]
    if shift is None:
        shift, err = least_error(softmax_errors(scaled, read, m.lo * factor, m.hi * factor, ctx.cfg.bits, m.signed,
                                                factor, m.refs))
    else:
        err = _error_at(scaled, m.refs, read, shift, ctx.cfg.bits, m.signed, factor)
    return int(shift), err / m.power


def softmax_reads(graph, tensors, opset: int) -> dict[str, SoftmaxRead]:
    """:func:`softmax_read` of each of ``tensors`` in ``graph`` (onnx-graphsurgeon) that Softmax reads."""
    found = graph.tensors()
    outputs = {o.name for o in graph.outputs}
    out = {}
    for t in tensors:
        read = softmax_read(found[t], outputs, opset) if t in found else None
        if read is not None:
            out[t] = read
    return out


def choose_softmax_shifts(ctx, float_model, float_weights, feeds: list[dict]) -> dict[str, int]:
    """The shift of every calibrated tensor in ``ctx.softmax`` by :func:`softmax_errors` on ``feeds`` (the float
    model, a skeleton fed with ``float_weights``); none without feeds. Each one measured is kept in
    ``ctx.softmax_values`` (:class:`Measured`: what :mod:`.align` weighs its factors by)."""
    from ...calibration.collect import run_observed

    todo = {t: r for t, r in ctx.softmax.items() if t in ctx.stats and ctx.stats[t].batches and t not in ctx.wide}
    if not todo or not feeds:
        return {}
    names = sorted({r.softmax_input for r in todo.values()})
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    batches = [(f, int(next(iter(f.values())).shape[0]) if f else 1) for f in feeds]
    for _, arrays, _ in run_observed(float_model, names, batches, weights=float_weights):
        for n, a in zip(names, arrays):
            values[n].append(np.asarray(a))
    out = {}
    for t, read in todo.items():
        m = ctx.softmax_values[t] = _measured(values[read.softmax_input], read, ctx.stats[t])
        out[t] = least_error(softmax_errors(m.values, read, m.lo, m.hi, ctx.cfg.bits, m.signed, refs=m.refs))[0]
    return out


def softmax_shifts(ctx, float_model, float_weights, kept: list[dict]) -> list[dict]:
    """Softmax-read tensors' shifts by the Softmax's error (.softmax_range); returns the report's samples."""
    if not ctx.softmax:
        return kept
    ctx.softmax_shift = choose_softmax_shifts(ctx, float_model, float_weights, kept)
    out, have = [], 0
    for f in kept:
        if have >= ctx.cfg.report_samples:
            break
        out.append(f)
        have += int(next(iter(f.values())).shape[0]) if f else 1
    return out


def realigned_shifts(ctx) -> None:
    """The Softmax-error shifts of the tensors :mod:`.align` scaled (``ctx.softmax_factor``), on ``factor``
    times their measured values (alignment is exact: the aligned model's values); one never measured takes the
    min/max-fitting shift of its scaled range (the unaligned choice would clip it)."""
    for t, factor in ctx.softmax_factor.items():
        found, st = softmax_nsr(ctx, t, factor), ctx.stats.get(t)
        if found is not None:
            ctx.softmax_shift[t] = found[0]
        elif st is not None and st.batches:
            signed = not st.nonnegative
            ctx.softmax_shift[t] = int(pow2.fit_shift(min(st.min, 0.0) if signed else 0.0, max(st.max, 0.0),
                                                      ctx.cfg.bits, signed))
