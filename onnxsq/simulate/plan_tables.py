"""Compiled look-up tables and float islands (for :mod:`.plan`): a table indexed by the codes' own
bits in their memory order, an island's session, feeds and output quantizer found once."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .rounding import float_saturate, int_limits


def lut_plan(table, layer, shape: tuple[int, ...], st, codes: Callable | None = None) -> Callable | None:
    """A table look-up; ``codes(ints)``: the input codes, when the layer moves them first (else its input)."""
    positions = int(np.prod(table.shape))
    values = np.ascontiguousarray(table.values.reshape(-1))
    clipped = np.ascontiguousarray(table.clipped.reshape(-1)) if table.clipped.any() else None
    low, src = table.low, layer.inputs[0]
    codes = codes or (lambda ints: ints[src])
    if positions > 1:
        if len(shape) < len(table.shape) or np.broadcast_shapes(shape, table.shape) != shape:
            return None
        return _lut_positions(values, clipped, low, positions, np.arange(positions).reshape(table.shape), codes, st)
    count = values.size
    wrap = np.dtype(np.uint8) if count == 256 else np.dtype(np.uint16) if count == 65536 else None
    if wrap is not None:  # indexed by the code's own bits: a cast, no subtraction
        where = (np.arange(count) + low) % count
        values = np.empty_like(values)
        values[where] = table.values.reshape(-1)
        if clipped is not None:
            clipped = np.empty_like(clipped)
            clipped[where] = table.clipped.reshape(-1)

    def run(ints: dict, feeds: Mapping) -> np.ndarray:
        q, back = memory_order(codes(ints))
        idx = q.astype(wrap) if wrap is not None else np.subtract(q, low, dtype=np.int64)
        out = values.take(idx, mode="clip")  # every code is in range: no bounds check
        if clipped is not None:
            st.saturated += int(np.count_nonzero(clipped.take(idx, mode="clip")))
        st.elements += out.size
        return out if back is None else out.transpose(back)

    return run


def _lut_positions(values, clipped, low: int, positions: int, offsets: np.ndarray, codes: Callable, st) -> Callable:
    """A table per position of the constants' broadcast shape: ``values[(code - low) * positions + position]``."""

    def run(ints: dict, feeds: Mapping) -> np.ndarray:
        idx = np.subtract(codes(ints), low, dtype=np.int64)
        idx *= positions
        idx += offsets
        out = values.take(idx)
        if clipped is not None:
            st.saturated += int(np.count_nonzero(clipped.take(idx)))
        st.elements += out.size
        return out

    return run


def memory_order(a: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """``a`` with its axes in memory order (C-contiguous where ``a`` is a transposed contiguous array,
    e.g. channels-last data seen as NCHW), and the permutation back (None: already in order). An
    elementwise op over the first runs over contiguous memory, and keeps the layout."""
    if a.ndim < 3 or a.flags.c_contiguous or a.size < 4096:
        return a, None
    perm = tuple(sorted(range(a.ndim), key=lambda i: -a.strides[i]))
    t = a.transpose(perm)
    if not t.flags.c_contiguous:
        return a, None
    return t, tuple(int(i) for i in np.argsort(perm))


def island_plan(sim, layer, st) -> Callable | None:
    p, out = sim.program, layer.out
    if not layer.steps:
        return None
    session = sim.floats.session_of(layer.name)
    if session is None:
        return None
    wanted = {i.name for i in session.get_inputs()}
    reads = [(i, p.dq[i], np.float32(np.ldexp(1.0, -p.tensors[p.dq[i]].shift))) for i in wanted if i in p.dq]
    fed = [i for i in wanted if i not in p.dq]
    outputs, quantize = [layer.source], _float_quantizer(out, sim.rounding, st)

    def run(ints: dict, feeds: Mapping) -> np.ndarray:
        feed = {i: np.multiply(ints[s], scale, dtype=np.float32) for i, s, scale in reads}
        for i in fed:
            feed[i] = np.asarray(feeds[i], order="C")
        (y,) = session.run(outputs, feed)
        return quantize(y)

    return run


def _float_quantizer(out, rounding: str, st) -> Callable:
    """A float island's output quantized at ``2**-shift``: for a float32 output and half-even or floor
    rounding, the scaling (by a power of two) and the rounding in float32, exact, in place; else
    :func:`~.rounding.float_saturate`."""
    lo, hi = int_limits(out.bits, out.signed)
    scale = np.float32(np.ldexp(1.0, out.shift))
    rnd = np.rint if rounding == "half-even" else np.floor if rounding == "floor" else None

    def run(y: np.ndarray) -> np.ndarray:
        if rnd is None or y.dtype != np.float32 or not y.size:
            q, n = float_saturate(y, out.shift, rounding, out.bits, out.signed)
            st.saturated += n
            st.elements += q.size
            return q
        f = np.multiply(y, scale)
        rnd(f, out=f)
        st.elements += f.size
        if f.min() < lo or f.max() > hi:
            st.saturated += int(np.count_nonzero(f < lo)) + int(np.count_nonzero(f > hi))
            np.clip(f, lo, hi, out=f)
        return f.astype(np.int32)

    return run
