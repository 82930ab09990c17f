"""Mergeable streaming statistics of one tensor, and the range estimators that turn them into shifts.

``TensorStats.update(batch)`` keeps only a fixed amount of state per tensor, whatever the number of
samples: count, exact-zero count, min/max, the original's moving average of the per-batch min/max,
and (when an estimator needs it) a histogram of magnitudes.

Merging is exact, so calibration can be split across processes or machines:

- min/max, counts and histograms are order-free: ``a.merge(b)`` equals one pass over both.
- The histogram has ``BINS`` bins over ``[0, 2**exp)`` where ``exp`` is the smallest power of two above
  the largest magnitude seen. When a larger value arrives the range doubles and pairs of bins are
  added; bin edges at every range are multiples of the edges of the range below, and the bin index
  ``floor(|x| * BINS / 2**exp)`` is exact in float64, so the final histogram depends only on the data,
  never on the order or the split. Positive and negative magnitudes are kept apart (signed ranges
  are asymmetric by one step).
- The moving average ``r <- 0.99 r + 0.01 b`` (first batch initialises it) is order-*dependent*. A run
  of batches is summarised as ``(n, f, r)`` (count, first value, average); two runs A then B combine as
  ``(n_A + n_B, f_A, r_B + 0.99**n_B * (r_A - f_B))`` (one pass over A then B, exactly in real numbers).
  Which runs are combined, in which order, is fixed by each batch's global position
  (:class:`~onnxsq.calibration.dyadic.DyadicFold`), so shards that know where their batches stand in
  the whole set merge to the bit-identical one-pass value. ``update(x, position)`` takes it (default:
  right after the last batch).

Estimators (``estimate_range``) give the ``[lo, hi]`` the shift must hold:
``minmax`` (all values fit), ``ema`` (the original: moving average × 1.25), ``percentile`` (the
``percentile`` quantile of |x| from the histogram), ``mse`` (:func:`mse_shift`, the power-of-two
shift minimising the expected squared quantization error on the histogram) and ``auto``
(:func:`mse_format`: shift *and* signedness of least expected error, so an almost non-negative tensor
may take an unsigned format and clip its few negatives).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import pow2
from .dyadic import DyadicFold
from .means import ChannelMean as ChannelMean  # re-exported: bias correction's means live beside these

BINS = 2048
MIN_EXP = -40  # smallest histogram range 2**-40: below that every value lands in bin 0
EMA_MOMENTUM = 0.99
EMA_EXPANSION = 1.25
METHODS = ("minmax", "ema", "percentile", "mse", "auto")
HIST_METHODS = frozenset({"percentile", "mse", "auto"})


def _ema_combine(a: tuple, b: tuple) -> tuple:
    """Two runs of batches, ``a`` then ``b``, as one: ``(n, first min, first max, ema min, ema max)``."""
    decay = EMA_MOMENTUM ** b[0]
    return (a[0] + b[0], a[1], a[2], b[3] + decay * (a[3] - b[1]), b[4] + decay * (a[4] - b[2]))


def _exp_above(m: float) -> int:
    """Smallest ``e >= MIN_EXP`` with ``m < 2**e``."""
    if m <= 0:
        return MIN_EXP
    return max(MIN_EXP, math.frexp(m)[1])


def _fold(hist: np.ndarray, times: int) -> np.ndarray:
    """The histogram of the range ``2**times`` larger: add groups of ``2**times`` adjacent bins."""
    if times <= 0:
        return hist
    if times >= int(math.log2(BINS)):
        out = np.zeros_like(hist)
        out[0] = hist.sum()
        return out
    g = 2**times
    folded = hist.reshape(-1, g).sum(axis=1)
    out = np.zeros_like(hist)
    out[: folded.size] = folded
    return out


@dataclass
class TensorStats:
    """Running statistics of one tensor. ``histogram=False`` skips the (costlier) histogram."""

    histogram: bool = False
    count: int = 0
    zeros: int = 0  # exact zeros among the values binned (the mse estimator's input)
    min: float = math.inf
    max: float = -math.inf
    batches: int = 0
    ema: DyadicFold = field(default_factory=lambda: DyadicFold(_ema_combine))  # (n, first min/max, ema min/max)
    hist_exp: int = MIN_EXP
    hist_pos: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    hist_neg: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    # -- streaming -----------------------------------------------------------------------------
    def update(self, x: np.ndarray, position: int | None = None) -> None:
        """Add one batch (any shape) at ``position`` in the whole calibration set (default: after the
        last one). Non-finite values are an error: their range is meaningless."""
        x = np.asarray(x)
        if x.size == 0:
            return
        bmin, bmax = float(x.min()), float(x.max())
        if not (math.isfinite(bmin) and math.isfinite(bmax)):
            raise ValueError("tensor holds inf or nan")
        self._add(int(x.size), int(x.size - np.count_nonzero(x)) if self.histogram else 0, bmin, bmax, position)
        if self.histogram:
            self._hist_update(x, max(abs(bmin), abs(bmax)), negatives=bmin < 0)

    def update_reduced(self, count: int, bmin: float, bmax: float, position: int | None = None) -> None:
        """Add one batch given by its size, min and max (computed elsewhere, e.g. inside the model);
        the same as :meth:`update` on that batch for statistics without a histogram."""
        if count == 0:
            return
        if not (math.isfinite(bmin) and math.isfinite(bmax)):
            raise ValueError("tensor holds inf or nan")
        if self.histogram:
            raise ValueError("a histogram needs the values: use update()")
        self._add(count, 0, bmin, bmax, position)

    def update_sampled(self, count: int, bmin: float, bmax: float, sample: np.ndarray,
                       position: int | None = None) -> None:
        """Add one batch given by its exact size, min and max and a subsample of its values, which alone
        is binned (:mod:`onnxsq.calibration.sampling`): ``zeros`` and the histogram count the subsample,
        the histogram's range is that of the exact min/max."""
        if count == 0:
            return
        if not (math.isfinite(bmin) and math.isfinite(bmax)):
            raise ValueError("tensor holds inf or nan")
        sample = np.asarray(sample)
        self._add(count, int(sample.size - np.count_nonzero(sample)) if self.histogram else 0, bmin, bmax, position)
        if self.histogram and sample.size:
            self._hist_update(sample, max(abs(bmin), abs(bmax)), negatives=bmin < 0)

    def _add(self, count: int, zeros: int, bmin: float, bmax: float, position: int | None) -> None:
        self.count += count
        self.zeros += zeros
        self.min, self.max = min(self.min, bmin), max(self.max, bmax)
        self.ema.push(self.ema.end() if position is None else position, (1, bmin, bmax, bmin, bmax))
        self.batches += 1

    @property
    def ema_min(self) -> float:
        v = self.ema.value()
        return 0.0 if v is None else v[3]

    @property
    def ema_max(self) -> float:
        v = self.ema.value()
        return 0.0 if v is None else v[4]

    @property
    def first_min(self) -> float:
        v = self.ema.value()
        return 0.0 if v is None else v[1]

    @property
    def first_max(self) -> float:
        v = self.ema.value()
        return 0.0 if v is None else v[2]

    def _hist_update(self, x: np.ndarray, mag: float, *, negatives: bool = True) -> None:
        exp = _exp_above(mag)
        if exp > self.hist_exp:
            self.hist_pos = _fold(self.hist_pos, exp - self.hist_exp)
            self.hist_neg = _fold(self.hist_neg, exp - self.hist_exp)
            self.hist_exp = exp
        # x * 2**(log2(BINS) - exp) in float32 is exact (a power-of-two factor, no overflow since
        # |x| < 2**exp), and its truncation toward zero is floor(|x| * ...) with x's sign: the bin
        # index, exact, below BINS in magnitude without clamping. One pass writes the truncated
        # products straight into integers (numpy casts its buffered float32 results), one counts.
        flat = x.ravel()
        if flat.dtype != np.float32:
            flat = flat.astype(np.float64)
        idx = np.empty(flat.size, np.intp)
        np.multiply(flat, flat.dtype.type(math.ldexp(1.0, int(math.log2(BINS)) - self.hist_exp)), out=idx,
                    casting="unsafe")
        if not negatives:  # (a ReLU output: every index is its bin)
            self.hist_pos += np.bincount(idx, minlength=BINS)
            return
        np.add(idx, BINS, out=idx)  # positives of bin k at BINS + k, negatives of bin k >= 1 at BINS - k
        both = np.bincount(idx, minlength=2 * BINS)
        del idx
        neg = both[BINS - 1:0:-1].copy()  # bins 1 .. BINS-1 of the negatives
        neg0 = int(np.count_nonzero(flat < 0)) - int(neg.sum())  # negatives in bin 0 share index BINS
        self.hist_pos[0] += both[BINS] - neg0
        self.hist_pos[1:] += both[BINS + 1:]
        self.hist_neg[0] += neg0
        self.hist_neg[1:] += neg

    # -- merging -------------------------------------------------------------------------------
    def merge(self, later: TensorStats) -> TensorStats:
        """A new TensorStats equal to one pass over ``self``'s batches followed by ``later``'s."""
        if self.histogram != later.histogram:
            raise ValueError("cannot merge statistics with and without a histogram")
        if later.batches == 0:
            return self.copy()
        if self.batches == 0:
            return later.copy()
        out = TensorStats(histogram=self.histogram)
        out.count, out.zeros = self.count + later.count, self.zeros + later.zeros
        out.min, out.max = min(self.min, later.min), max(self.max, later.max)
        out.batches = self.batches + later.batches
        out.ema = self.ema.merged(later.ema)
        if self.histogram:
            out.hist_exp = max(self.hist_exp, later.hist_exp)
            out.hist_pos = _fold(self.hist_pos, out.hist_exp - self.hist_exp) + \
                _fold(later.hist_pos, out.hist_exp - later.hist_exp)
            out.hist_neg = _fold(self.hist_neg, out.hist_exp - self.hist_exp) + \
                _fold(later.hist_neg, out.hist_exp - later.hist_exp)
        return out

    def copy(self) -> TensorStats:
        return TensorStats.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (for shards computed elsewhere)."""
        d = {k: getattr(self, k) for k in ("histogram", "count", "zeros", "min", "max", "batches", "hist_exp")}
        d["ema"] = self.ema.to_list(list)
        if self.histogram:
            d["hist_pos"], d["hist_neg"] = self.hist_pos.tolist(), self.hist_neg.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorStats:
        s = cls(histogram=bool(d["histogram"]))
        for k in ("count", "zeros", "batches", "hist_exp"):
            setattr(s, k, int(d[k]))
        for k in ("min", "max"):
            setattr(s, k, float(d[k]))
        if "ema" not in d and s.batches:  # written before the positioned moving average: one block of it
            d = {**d, "ema": [[0, s.batches, [s.batches, d["first_min"], d["first_max"], d["ema_min"], d["ema_max"]]]]}
        s.ema = DyadicFold.from_list(_ema_combine, d.get("ema", []), lambda v: (int(v[0]), *map(float, v[1:])))
        if s.histogram:
            s.hist_pos = np.asarray(d["hist_pos"], np.int64).copy()
            s.hist_neg = np.asarray(d["hist_neg"], np.int64).copy()
        return s

    def scaled(self, factor: float) -> TensorStats:
        """These statistics of ``factor * x`` (``factor > 0``): min/max and the moving averages exactly,
        the histogram rebinned at the new range (each bin's count spread uniformly over its scaled
        interval, cumulative counts rounded so that the total stays exact; exact zeros stay in bin 0)."""
        if not factor > 0:
            raise ValueError(f"a scale factor must be positive, not {factor}")
        out = TensorStats(histogram=self.histogram)
        out.count, out.zeros, out.batches = self.count, self.zeros, self.batches
        out.min, out.max = self.min * factor, self.max * factor
        out.ema = DyadicFold.from_list(_ema_combine, self.ema.to_list(),  # (n, first min/max, ema min/max)
                                       lambda v: (v[0], *(float(x) * factor for x in v[1:])))
        if self.histogram:
            mag = max(abs(self.min), abs(self.max)) * factor if self.batches else 0.0
            out.hist_exp = max(self.hist_exp, _exp_above(mag))
            out.hist_pos = _rebin(self.hist_pos, self.bin_width() * factor, out.bin_width(), self.zeros)
            out.hist_neg = _rebin(self.hist_neg, self.bin_width() * factor, out.bin_width(), 0)
        return out

    # -- queries -------------------------------------------------------------------------------
    @property
    def nonnegative(self) -> bool:
        return self.batches == 0 or self.min >= 0

    def bin_width(self) -> float:
        return math.ldexp(1.0, self.hist_exp - int(math.log2(BINS)))

    def quantile_abs(self, q: float) -> float:
        """Upper edge of the histogram bin where the ``q`` quantile (0..1) of |x| falls."""
        total = self.hist_pos + self.hist_neg
        n = int(total.sum())
        if n == 0:
            return 0.0
        k = int(np.searchsorted(np.cumsum(total), math.ceil(q * n)))
        return min((k + 1) * self.bin_width(), max(abs(self.min), abs(self.max)))

    def clipped_fraction(self, lo: float, hi: float) -> float | None:
        """Fraction of the values seen below ``lo`` or above ``hi`` (``lo <= 0 <= hi``), or None when
        these statistics cannot tell (a range narrower than min/max and no histogram).

        From the histogram: the bins whose lower edge is at or beyond the limit (exact when the limit
        is a bin edge, as ``(qmax + 0.5) * 2**-shift`` is for up to 10 bits; otherwise a lower bound).
        """
        if self.batches == 0 or self.count == 0 or (self.min >= lo and self.max <= hi):
            return 0.0
        if not self.histogram:
            return None
        edges = np.arange(BINS) * self.bin_width()
        n = int(self.hist_pos[edges >= hi].sum()) + int(self.hist_neg[edges >= -lo].sum())
        return n / max(int(self.hist_pos.sum() + self.hist_neg.sum()), 1)  # of the values binned


def _rebin(hist: np.ndarray, old_width: float, new_width: float, zeros: int) -> np.ndarray:
    """``hist`` (bins of ``old_width``, ``zeros`` exact zeros in bin 0) as bins of ``new_width``."""
    h = hist.astype(np.float64)
    z = min(float(zeros), h[0])
    h[0] -= z
    cum = np.concatenate([[0.0], np.cumsum(h)])
    edges = np.arange(BINS + 1) * (new_width / old_width)  # the new edges in units of the old bins
    at = np.interp(edges, np.arange(BINS + 1, dtype=np.float64), cum)
    at[-1] = cum[-1]
    out = np.diff(np.rint(at)).astype(np.int64)
    out[0] += int(z)
    return out


def estimate_range(stats: TensorStats, method: str, *, percentile: float = 99.99) -> tuple[float, float]:
    """The ``[lo, hi]`` a shift must hold under ``method`` (``mse`` is handled by :func:`choose_shift`)."""
    if stats.batches == 0:
        return 0.0, 0.0
    if method == "minmax" or method == "mse":
        return stats.min, stats.max
    if method == "ema":
        lo, hi = stats.ema_min * EMA_EXPANSION, stats.ema_max * EMA_EXPANSION
        return min(lo, 0.0) if stats.min < 0 else max(lo, 0.0), hi
    if method == "percentile":
        if not stats.histogram:
            raise ValueError("the percentile estimator needs statistics collected with histogram=True")
        m = stats.quantile_abs(percentile / 100.0)
        return (max(stats.min, -m) if stats.min < 0 else max(stats.min, 0.0)), min(stats.max, m)
    raise ValueError(f"unknown range estimator {method!r} (choose from {', '.join(METHODS)})")


def mse_errors(stats: TensorStats, bits: int, signed: bool, *, candidates: int = 6,
               factor: float = 1.0) -> list[tuple[int, float]]:
    """``(shift, expected squared error)`` on the histogram for the min/max-fitting shift and up to
    ``candidates`` finer ones (each halves the range). With ``factor``: of ``factor * x`` quantized at
    each shift, the error in the units of ``x`` (steps ``2**-shift / factor``; .align's choice).

    Within the range a value costs ``step**2 / 12`` (uniform rounding error; exact zeros cost nothing),
    beyond it ``(|x| - limit)**2`` at the bin centre; for an unsigned format every negative value is
    beyond its limit 0 (it clips to zero).
    """
    if not stats.histogram:
        raise ValueError("the mse and auto estimators need statistics collected with histogram=True")
    lo, hi = (stats.min, stats.max) if stats.batches else (0.0, 0.0)
    lo, hi = lo * factor, hi * factor
    base = pow2.fit_shift(min(lo, 0.0) if signed else max(lo, 0.0), max(hi, 0.0), bits, signed)
    qmin, qmax = pow2.int_range(bits, signed)
    centres = (np.arange(BINS) + 0.5) * stats.bin_width()
    pos, neg = stats.hist_pos.astype(np.float64), stats.hist_neg.astype(np.float64)
    nonzero = pos.sum() + neg.sum() - stats.zeros
    out = []
    for shift in range(base, min(base + candidates, pow2.MAX_SHIFT) + 1):
        step = math.ldexp(1.0, -shift) / factor
        err = max(nonzero, 0.0) * step * step / 12.0
        for hist, limit in ((pos, qmax * step), (neg, -qmin * step)):
            over = centres > limit
            err += float(np.sum(hist[over] * ((centres[over] - limit) ** 2 - step * step / 12.0)))
        out.append((shift, err))
    return out


def least_error(errors: list[tuple[int, float]]) -> tuple[int, float]:
    """``(shift, error)`` of least error among ``(shift, error)`` candidates, coarsest first; ties (within
    1e-12 relative) keep the coarser shift (nothing clipped more)."""
    best, best_err = errors[0]
    for shift, err in errors[1:]:
        if err < best_err * (1 - 1e-12):
            best, best_err = shift, err
    return int(best), best_err


def least_error_format(nonnegative: bool, errors: Callable[[bool], list[tuple[int, float]]]) -> tuple[int, bool]:
    """``(shift, signed)`` of least error, ``errors(signed)`` giving each format's candidates: unsigned for a
    never-negative tensor; else the unsigned format only where it is strictly better (a tie keeps the
    signed one, which clips nothing)."""
    if nonnegative:
        return least_error(errors(False))[0], False
    s_shift, s_err = least_error(errors(True))
    u_shift, u_err = least_error(errors(False))
    return (u_shift, False) if u_err < s_err * (1 - 1e-12) else (s_shift, True)


def mse_shift(stats: TensorStats, bits: int, signed: bool, *, candidates: int = 6) -> int:
    """The shift minimising the expected squared error on the histogram (:func:`mse_errors`)."""
    return least_error(mse_errors(stats, bits, signed, candidates=candidates))[0]


def mse_format(stats: TensorStats, bits: int, *, candidates: int = 6) -> tuple[int, bool]:
    """``(shift, signed)`` of least expected squared error: a tensor that is almost never negative
    (HardSwish's minimum is -3/8, SiLU's -0.28) loses less by clipping its few negatives to zero in an
    unsigned format than by spending one bit of every value on a sign. Never-negative tensors are
    unsigned; a tie keeps the signed format (it clips nothing)."""
    return least_error_format(stats.nonnegative, lambda signed: mse_errors(stats, bits, signed, candidates=candidates))


def choose_shift(stats: TensorStats, method: str, bits: int, *, percentile: float = 99.99,
                 signed: bool | None = None) -> tuple[int, bool]:
    """``(shift, signed)`` for an activation: unsigned when never negative, shift by ``method``."""
    if method == "auto":
        return mse_format(stats, bits) if signed is None else (mse_shift(stats, bits, signed), signed)
    signed = (not stats.nonnegative) if signed is None else signed
    if method == "mse":
        return mse_shift(stats, bits, signed), signed
    lo, hi = estimate_range(stats, method, percentile=percentile)
    lo = min(lo, 0.0) if signed else 0.0
    return int(pow2.fit_shift(lo, max(hi, 0.0), bits, signed)), signed
