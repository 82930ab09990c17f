"""Requantization: an exact integer ``v`` at ``2**-shift`` (optionally divided by an integer count) to
another power-of-two scale, with a chosen rounding, then saturation to the output integer type.

A value is ``v * 2**-s / d``. Requantizing it to the output shift ``t`` computes
``round(v / (2**(s - t) * d))``: a right shift by ``k = s - t`` (a *left* shift when ``k < 0``) and,
for an average, an exact integer division by the count ``d``. Rounding is decided on the exact
remainder, never on a float:

- ``half-even``: ties to the even neighbour (ONNX QuantizeLinear; onnxruntime's fused kernels agree
  wherever their float32 arithmetic is exact, i.e. ``|acc| < 2**24``);
- ``half-up``: ties toward +inf (``(v + (1 << (k-1))) >> k``, what most DSPs do);
- ``half-away``: ties away from zero;
- ``floor``: a bare arithmetic right shift (``v >> k``).
"""

from __future__ import annotations

import numpy as np

ROUNDINGS = ("half-even", "half-up", "half-away", "floor")
FLOAT_EXACT = 1 << 51  # below it, v * 2**-k, v * 2**-k + 0.5 and their floor/rint are exact in float64


def int_limits(bits: int, signed: bool) -> tuple[int, int]:
    """The saturation range of a ``bits``-bit integer type."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def divide_round(num: np.ndarray, den: np.ndarray | int, rounding: str) -> np.ndarray:
    """``round(num / den)`` for int64 arrays, ``den > 0``, exactly, by ``rounding``."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    if num.size and max(-int(num.min()), int(num.max())) < FLOAT_EXACT and int(den.max()) < FLOAT_EXACT:
        # a float quotient, off by at most one near an integer, then corrected exactly (no int64 division)
        q = np.floor(num / den).astype(np.int64)
        r = num - q * den
        low, high = r < 0, r >= den
        q = q - low + high
        r = r + den * low - den * high
    else:
        q = np.floor_divide(num, den)
        r = num - q * den
    if rounding == "floor":
        return q
    twice = 2 * r  # 0 <= r < den
    if rounding == "half-up":
        return q + (twice >= den)
    above = twice > den
    tie = twice == den
    if rounding == "half-even":
        return q + (above | (tie & (q % 2 == 1)))
    if rounding == "half-away":
        return q + (above | (tie & (q >= 0)))
    raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, not {rounding!r}")


def requantize(v: np.ndarray, k: np.ndarray | int, rounding: str = "half-even",
               divisor: np.ndarray | int = 1) -> np.ndarray:
    """``round(v / (2**k * divisor))`` as int64; ``k`` (broadcastable to ``v``) may be negative (a left
    shift, exact) or zero; ``divisor`` a positive integer (an average's count), broadcastable too."""
    v = np.asarray(v, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    divisor = np.asarray(divisor, dtype=np.int64)
    if not k.any() and np.all(divisor == 1):
        return v.copy()
    if np.all(divisor == 1) and np.all(k >= 0):
        if np.abs(v).max(initial=0) < FLOAT_EXACT:  # x * 2**-k and its rounding are exact in float64
            return round_float(v * np.ldexp(1.0, -k), rounding).astype(np.int64)
        return shift_round(v, k, rounding)
    left = np.maximum(-k, 0)
    num = np.left_shift(v, left)
    den = np.left_shift(np.int64(1), np.maximum(k, 0)) * divisor
    if np.all(den == 1):
        return np.broadcast_to(num, np.broadcast_shapes(num.shape, den.shape)).copy()
    return divide_round(num, den, rounding)


def requantize_saturate(v: np.ndarray, k: np.ndarray | int, rounding: str, divisor: np.ndarray | int,
                        bits: int, signed: bool) -> tuple[np.ndarray, int]:
    """:func:`requantize` then :func:`saturate`, as int32 (the layer's output), and the clipped count.

    Without a divisor the shift by ``k`` (either sign) is a multiply by ``2**-k``, exact in float64 while
    the values stay below ``2**51``, and so is the rounding: one float pass, a min/max, a cast. Larger
    values, or an average's divisor, take the exact integer path."""
    divisor = np.asarray(divisor)
    k = np.asarray(k, dtype=np.int64)
    if divisor.size == 1 and int(divisor.flat[0]) == 1 and np.asarray(v).size:
        kmax = int(k) if k.ndim == 0 else int(k.max(initial=0))
        scale = 2.0 ** -int(k) if k.ndim == 0 else np.ldexp(1.0, -k)
        f = _round_inplace(np.asarray(np.multiply(v, scale, dtype=np.float64)), rounding)  # 0-d: an array too
        fmin, fmax = float(f.min()), float(f.max())
        if (max(-fmin, fmax) + 1.0) * 2.0 ** kmax < FLOAT_EXACT:
            return _clip_cast(f, fmin, fmax, bits, signed)
    q, n = saturate(requantize(v, k, rounding, divisor), bits, signed)
    return q.astype(np.int32), n


def float_saturate(x: np.ndarray, shift: int, rounding: str, bits: int, signed: bool) -> tuple[np.ndarray, int]:
    """Float values ``x`` quantized at ``2**-shift``: rounded by ``rounding``, saturated, as int32, and
    the clipped count (a float island's output entering the integer domain). A float32 ``x`` stays
    float32 for half-even and floor: scaling by a power of two and rounding to an integer are exact in
    it (``f + 0.5`` of the other roundings is not, above ``2**23``)."""
    x = np.asarray(x)
    keep = x.dtype == np.float32 and rounding in ("half-even", "floor")
    dtype = np.float32 if keep else np.float64
    f = np.asarray(np.multiply(x, dtype(np.ldexp(1.0, shift)), dtype=dtype))  # a power of two: exact; 0-d too
    f = _round_inplace(f, rounding)
    if not f.size:
        return f.astype(np.int32), 0
    return _clip_cast(f, float(f.min()), float(f.max()), bits, signed)


def _clip_cast(f: np.ndarray, fmin: float, fmax: float, bits: int, signed: bool) -> tuple[np.ndarray, int]:
    lo, hi = int_limits(bits, signed)
    n = 0
    if fmin < lo or fmax > hi:
        n = int(np.count_nonzero(f < lo)) + int(np.count_nonzero(f > hi))
        np.clip(f, lo, hi, out=f)
    return f.astype(np.int32), n


def _round_inplace(f: np.ndarray, rounding: str) -> np.ndarray:
    if rounding == "half-even":
        return np.rint(f, out=f)
    if rounding == "half-up":
        f += 0.5
        return np.floor(f, out=f)
    return round_float(f, rounding)


def shift_round(v: np.ndarray, k: np.ndarray, rounding: str) -> np.ndarray:
    """``round(v / 2**k)`` for ``k >= 0`` by shifts and masks (what a DSP does; no division)."""
    q = np.right_shift(v, k)  # floor
    if rounding == "floor":
        return q
    rem = v - np.left_shift(q, k)  # 0 <= rem < 2**k
    half = np.left_shift(np.int64(1), k) >> 1  # 0 where k == 0: no fraction, nothing rounds
    nonzero = k > 0
    if rounding == "half-up":
        return q + ((rem >= half) & nonzero)
    above = rem > half
    tie = (rem == half) & nonzero
    if rounding == "half-even":
        return q + (above | (tie & ((q & 1) == 1)))
    if rounding == "half-away":
        return q + (above | (tie & (q >= 0)))
    raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, not {rounding!r}")


def saturate(v: np.ndarray, bits: int, signed: bool) -> tuple[np.ndarray, int]:
    """``v`` clipped to the integer type, and how many elements were clipped."""
    lo, hi = int_limits(bits, signed)
    clipped = int(np.count_nonzero((v < lo) | (v > hi)))
    return np.clip(v, lo, hi), clipped


def round_float(x: np.ndarray, rounding: str) -> np.ndarray:
    """A float array rounded to integers (float64 result) by ``rounding``: a float island's output, or
    a float graph input, entering the integer domain."""
    x = np.asarray(x, dtype=np.float64)
    if rounding == "half-even":
        return np.rint(x)
    if rounding == "half-up":
        return np.floor(x + 0.5)
    if rounding == "half-away":
        return np.sign(x) * np.floor(np.abs(x) + 0.5)
    if rounding == "floor":
        return np.floor(x)
    raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, not {rounding!r}")


def wrap(v: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """``v`` wrapped to a ``bits``-bit two's-complement accumulator (what an overflowing int32 MAC
    unit leaves), and how many elements overflowed."""
    lo, hi = int_limits(bits, True)
    over = (v < lo) | (v > hi)
    n = int(np.count_nonzero(over))
    if not n or bits >= 64:
        return v, n
    span = np.int64(1) << np.int64(bits)
    return ((v - lo) % span) + lo, n
