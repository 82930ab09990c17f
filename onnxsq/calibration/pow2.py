"""Power-of-two fixed-point math: integer ranges, shifts that fit a range, exact quantization.

A ``bits``-bit tensor with ``shift`` fractional bits stores ``q = clip(round(x * 2**shift))`` and
means ``x^ = q * 2**-shift``; in QDQ terms ``scale = 2**-shift`` and zero point 0. Multiplying a
float by a power of two is exact (barring overflow/underflow), so ``x * 2**shift`` has no rounding
error of its own and the only error is the rounding to an integer (half to even, as ONNX
``QuantizeLinear`` does) and the clipping to the integer range. Exact zeros stay zero.

Ranges: signed tensors use ``[-2**(b-1), 2**(b-1) - 1]``, unsigned ``[0, 2**b - 1]``; weights are
symmetric, ``[-(2**(b-1) - 1), 2**(b-1) - 1]``, so that negating a weight never saturates.

The shift that *fits* a range is the largest ``shift`` (the finest step) for which every value of
``[lo, hi]`` lies in ``[qmin, qmax] * 2**-shift``. The original computed
``IL = ceil(log2(max|x|)) (+1 if signed); FL = bits - IL``, which can saturate by one step at the top
(``max = 2**IL`` maps to ``2**(bits-1)``); :func:`fit_shift` never does.

Pure numpy, no ONNX: shared by post-training quantization and quantization-aware training.
"""

from __future__ import annotations

import math

import numpy as np

ArrayLike = float | np.ndarray

# Shifts stay where 2**-shift is a normal float32, with room for bias scales (sum of two shifts).
MIN_SHIFT = -60
MAX_SHIFT = 60
BIAS_BITS = 32


def int_range(bits: int, signed: bool, *, symmetric: bool = False) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit integer; ``symmetric`` drops the most negative value."""
    if bits < 2 or bits > 32:
        raise ValueError(f"bits must be in 2..32, not {bits}")
    if not signed:
        return 0, 2**bits - 1
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if symmetric else -qmax - 1), qmax


def scale_of(shift: ArrayLike) -> ArrayLike:
    """``2**-shift`` exactly (``np.ldexp``), as float32 when it is an array."""
    if np.ndim(shift) == 0:
        return float(np.ldexp(1.0, -int(shift)))
    return np.ldexp(np.ones(np.shape(shift), np.float32), -np.asarray(shift, dtype=np.int32))


def shift_of(scale: ArrayLike) -> ArrayLike:
    """The shift of a power-of-two scale; raises ValueError when a scale is not an exact power of two."""
    arr = np.asarray(scale, dtype=np.float64)
    mant, exp = np.frexp(arr)
    if np.any(mant != 0.5):
        raise ValueError(f"scale is not a power of two: {arr[mant != 0.5].ravel()[:3]}")
    shift = 1 - exp  # scale = 0.5 * 2**exp = 2**(exp-1)
    return int(shift) if arr.ndim == 0 else shift.astype(np.int64)


def is_power_of_two(scale: ArrayLike) -> bool:
    arr = np.asarray(scale, dtype=np.float64)
    return bool(arr.size) and bool(np.all(np.frexp(arr)[0] == 0.5))


def _fit_one(magnitude: float, limit: int) -> int:
    """Largest shift with ``magnitude <= limit * 2**-shift`` (exact, float64 power-of-two arithmetic)."""
    if not math.isfinite(magnitude):
        raise ValueError(f"cannot fit a non-finite range ({magnitude})")
    if magnitude <= 0.0:
        return MAX_SHIFT
    ratio = limit / magnitude
    if not math.isfinite(ratio) or ratio > math.ldexp(1.0, MAX_SHIFT):
        return MAX_SHIFT  # a vanishing range: the clamp decides
    if ratio < math.ldexp(1.0, MIN_SHIFT):
        return MIN_SHIFT
    shift = int(math.floor(math.log2(ratio)))
    # log2 is approximate; settle the edge exactly (ldexp is exact).
    while math.ldexp(limit, -shift) < magnitude:
        shift -= 1
    while math.ldexp(limit, -(shift + 1)) >= magnitude:
        shift += 1
    return shift


def fit_shift(lo: ArrayLike, hi: ArrayLike, bits: int, signed: bool, *, symmetric: bool = False,
              default: int | None = None) -> ArrayLike:
    """The finest shift whose range ``[qmin, qmax] * 2**-shift`` holds all of ``[lo, hi]``.

    ``lo``/``hi`` may be arrays (per-channel). An all-zero range gets ``default`` (or ``bits - 1``,
    i.e. a range of about ±1). Unsigned requires ``lo >= 0``. Result is clamped to
    ``[MIN_SHIFT, MAX_SHIFT]``.
    """
    qmin, qmax = int_range(bits, signed, symmetric=symmetric)
    lo_a, hi_a = np.broadcast_arrays(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    if not signed and np.any(lo_a < 0):
        raise ValueError("an unsigned range cannot hold negative values")
    fallback = bits - 1 if default is None else default
    s = np.full(lo_a.shape, MAX_SHIFT, dtype=np.int64)
    s = np.where(hi_a > 0, np.minimum(s, _fit_many(np.where(hi_a > 0, hi_a, 0.0), qmax)), s)
    s = np.where(lo_a < 0, np.minimum(s, _fit_many(np.where(lo_a < 0, -lo_a, 0.0), -qmin)), s)
    out = np.where((s == MAX_SHIFT) & (lo_a == 0) & (hi_a == 0), fallback, np.clip(s, MIN_SHIFT, MAX_SHIFT))
    return int(out) if out.ndim == 0 else out.astype(np.int64)


def _fit_many(magnitude: np.ndarray, limit: int) -> np.ndarray:
    """:func:`_fit_one` of every element (the same exact rule, vectorized: per-channel weights have
    tens of thousands of channels)."""
    m = np.asarray(magnitude, np.float64)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"cannot fit a non-finite range ({m[~np.isfinite(m)].ravel()[0]})")
    out = np.full(m.shape, MAX_SHIFT, dtype=np.int64)
    with np.errstate(divide="ignore", over="ignore"):
        ratio = np.where(m > 0, limit / np.where(m > 0, m, 1.0), np.inf)
    big = ~np.isfinite(ratio) | (ratio > math.ldexp(1.0, MAX_SHIFT))
    small = ~big & (ratio < math.ldexp(1.0, MIN_SHIFT))
    todo = ~big & ~small
    out[small] = MIN_SHIFT
    r, mt = ratio[todo], m[todo]
    shift = np.floor(np.log2(r)).astype(np.int64)
    # log2 is approximate; settle the edge exactly (ldexp is exact)
    while np.any(low := np.ldexp(float(limit), -shift) < mt):
        shift[low] -= 1
    while np.any(high := np.ldexp(float(limit), -(shift + 1)) >= mt):
        shift[high] += 1
    out[todo] = shift
    return out


def expand_shape(shift: ArrayLike, ndim: int, axis: int | None) -> np.ndarray:
    """Broadcastable per-channel values: ``shift`` along ``axis`` of an ``ndim``-d tensor."""
    arr = np.asarray(shift)
    if arr.ndim == 0 or axis is None:
        return arr
    shape = [1] * ndim
    shape[axis] = arr.size
    return arr.reshape(shape)


def power_of_two(shift: ArrayLike, dtype, ndim: int, axis: int | None) -> np.ndarray:
    """``2**shift`` in ``dtype`` (exact: |shift| <= 60 is a normal number even in float32), shaped to
    broadcast against an ``ndim``-d tensor along ``axis``."""
    sh = np.asarray(shift, dtype=np.int64)
    return expand_shape(np.ldexp(np.ones(sh.shape, dtype), sh), ndim, axis)


def round_clipped(buf: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """In place: ``clip(round_half_even(buf), lo, hi)`` for a float32/float64 array, returned.

    Clipping first to the integers ``lo..hi`` gives the same result (rounding is monotonic and keeps
    integers) and bounds the values, so adding and subtracting ``1.5 * 2**mantissa_bits`` rounds to
    the nearest integer, ties to even, exactly (IEEE round-to-nearest-even): np.rint measured ~6x
    slower than one add. Needs ``|lo|, |hi| <= 2**22`` (float32) -- every QDQ integer type up to 16 bits.
    ``buf`` must be an ndarray (0-d included), not a numpy scalar: scalars cannot be written in place.
    """
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"round_clipped needs an ndarray to work in place, not {type(buf).__name__}")
    np.clip(buf, lo, hi, out=buf)
    if buf.dtype == np.float32 and max(abs(lo), abs(hi)) > 2**22:
        np.rint(buf, out=buf)
        return buf
    magic = buf.dtype.type(1.5 * 2.0 ** np.finfo(buf.dtype).nmant)
    buf += magic
    buf -= magic
    return buf


def quantize(x: np.ndarray, shift: ArrayLike, bits: int, signed: bool, *, symmetric: bool = False,
             axis: int | None = None, dtype=np.int64) -> np.ndarray:
    """Integers ``clip(round_half_even(x * 2**shift))`` as ``dtype``, per-tensor or per-channel on ``axis``.

    float32 input is worked in float32: scaling by a power of two is exact (bits <= 16 keeps every
    unclipped integer exact too), so the integers equal the float64 computation's, at half the memory
    traffic.
    """
    qmin, qmax = int_range(bits, signed, symmetric=symmetric)
    arr = np.asarray(x)
    small = bits <= 16 and int(np.max(np.abs(np.asarray(shift)), initial=0)) <= 100  # 2**shift normal in float32
    xw = np.asarray(arr, dtype=np.float32 if arr.dtype == np.float32 and small else np.float64)
    # exact; np.ldexp is ~10x slower. asarray: a 0-d product is a numpy scalar, which cannot be
    # rounded in place (a scalar constant, e.g. paddle2onnx's Mul(scale), is a 0-d tensor).
    q = np.asarray(np.multiply(xw, power_of_two(shift, xw.dtype, xw.ndim, axis)))
    return round_clipped(q, qmin, qmax).astype(dtype, copy=False)  # q is ours: no copy when dtype matches


def dequantize(q: np.ndarray, shift: ArrayLike, *, axis: int | None = None, dtype=np.float32) -> np.ndarray:
    """``q * 2**-shift`` (exact for |q| < 2**24 in float32)."""
    q64 = np.asarray(q, dtype=np.float64)
    return np.multiply(q64, power_of_two(-np.asarray(shift), np.float64, q64.ndim, axis)).astype(dtype)


def fake_quantize(x: np.ndarray, shift: ArrayLike, bits: int, signed: bool, *, symmetric: bool = False,
                  axis: int | None = None) -> np.ndarray:
    """``dequantize(quantize(x))``: what a QuantizeLinear → DequantizeLinear pair computes."""
    return dequantize(quantize(x, shift, bits, signed, symmetric=symmetric, axis=axis), shift, axis=axis,
                      dtype=np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float32)


def weight_shift(w: np.ndarray, bits: int, *, axis: int | None = None, method: str = "minmax",
                 candidates: int = 2) -> ArrayLike:
    """Symmetric signed shift for ``w`` (per-tensor, or one per slice along ``axis``).

    ``minmax``: the finest shift that holds every weight. ``mse``: of that shift and up to
    ``candidates`` finer ones (which saturate the largest weights), the one with the smallest
    squared error on the actual weights (exact, not a model of the error; ties keep the coarser).

    Speed: each candidate is one in-place pass in the weights' own binary type (float32 for
    float16/float32), which is exact: scaling by ``2**s`` is exact, rounding and clipping give
    integers, and ``w - x^`` is a multiple of ``ulp(w)`` no larger than ``|w|`` (fitting shifts keep
    ``2**-s`` above ``ulp(w)``), so it is representable. The squared errors are then summed in
    float64, the same values and order as ``(w - dequantize(quantize(w)))**2`` in float64.
    """
    arr = np.asarray(w)
    work = np.float32 if arr.dtype in (np.float16, np.float32) else np.float64
    x = np.asarray(arr, dtype=work)
    reduce = tuple(i for i in range(x.ndim) if i != axis) if axis is not None else None
    if axis is None:
        m = float(max(float(x.max()), -float(x.min()))) if x.size else 0.0
        base = fit_shift(-m, m, bits, True, symmetric=True)
    else:
        m = np.maximum(x.max(axis=reduce), -x.min(axis=reduce)).astype(np.float64) if x.size \
            else np.zeros(x.shape[axis])
        base = np.asarray(fit_shift(-m, m, bits, True, symmetric=True))
    if method == "minmax" or not x.size:
        return base
    if method != "mse":
        raise ValueError(f"unknown weight method {method!r}")
    qmax = int_range(bits, True, symmetric=True)[1]
    best = np.asarray(base).copy()
    best_err = None
    buf = np.empty(x.shape, dtype=work)
    for extra in range(candidates + 1):
        shift = np.minimum(np.asarray(base) + extra, MAX_SHIFT)
        up, down = power_of_two(shift, work, x.ndim, axis), power_of_two(-shift, work, x.ndim, axis)
        np.multiply(x, up, out=buf)
        round_clipped(buf, -qmax, qmax)
        np.multiply(buf, down, out=buf)
        np.subtract(x, buf, out=buf)  # exact (see above)
        sq = np.square(buf, dtype=np.float64)
        err = sq.sum() if axis is None else sq.sum(axis=reduce)
        del sq
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best = np.where(better, shift, best)
        best_err = np.where(better, err, best_err)
    return int(best) if axis is None else best.astype(np.int64)


def bias_shift(input_shift: int, weight_shift_: ArrayLike) -> ArrayLike:
    """The accumulator's shift: ``scale_b = scale_in * scale_w``, i.e. shifts add."""
    return np.asarray(weight_shift_, dtype=np.int64) + int(input_shift) if np.ndim(weight_shift_) \
        else int(input_shift) + int(weight_shift_)


def requant_shift(input_shift: int, weight_shift_: ArrayLike, output_shift: int) -> ArrayLike:
    """Right shift turning the int32 accumulator into the output: ``acc >> (s_in + s_w - s_out)``."""
    return np.asarray(bias_shift(input_shift, weight_shift_)) - int(output_shift)


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio in dB; ``inf`` when there is no noise."""
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)
