"""Threshold search on one weight array: the numpy core of :mod:`onnxsq.passes.threshold`.

Pure numpy, no ONNX: the training engine calls :func:`threshold_array` directly for gradual
channelwise sparsification.

The math (``a = |w|`` per layer, or per output channel when channelwise; ``n`` elements; fraction ``f``):

- ``K`` = the largest count with ``K / n <= f`` (the number of weights we may zero).
- cap ``c = min(value_max, value_maxratio * max a)``: weights with ``a >= c`` are never zeroed.
- bound ``b = min(a_(K), c)`` where ``a_(K)`` is the (K+1)-th smallest magnitude (``inf`` when
  ``K = n``). Zeroing every ``a <= t`` keeps the zero count ``<= K`` exactly when ``t < a_(K)``.
- **exact**: ``t = max {a_i : a_i < b}`` (0 when there is none), found with one ``np.partition``.
  It is a weight magnitude, so ties are handled: when many weights share the magnitude ``a_(K)``,
  none of them is zeroed, and the zero fraction stays ``<= f`` (zeroing is inclusive, ``a <= t``).
- **grid** (the original tool): ``step = max a * step_factor``; the coarse pass keeps the largest
  ``t = k * 100 * step < b``, the fine pass the largest ``t = k * 100 * step + j * step < b`` with
  ``0 <= j < 100``; ``t = 0`` when no grid point fits. The original walked these grids testing the
  zero fraction at each point (``step += step_size`` in float32); we compute the same last passing
  point in closed form in float64, so results can differ from it only by float32 drift at a grid
  boundary. The grid threshold never zeroes more than the exact one.

Both are monotone in ``f`` and idempotent; ``f = 0`` zeroes nothing. Existing zeros stay zero (a
layer already sparser than ``f`` is left as it is). Bit patterns of untouched weights (including
``-0.0``) are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SEARCHES = ("exact", "grid")
GRID_COARSE = 100  # the original's coarse step is 100 fine steps


@dataclass(frozen=True)
class ThresholdInfo:
    """What :func:`threshold_array` did. Arrays have one entry per row (1 row when layerwise)."""

    max_abs: np.ndarray  # max |w| per row
    cap: np.ndarray  # min(value_max, value_maxratio * max|w|) per row
    threshold_exact: np.ndarray  # exact-search threshold per row
    threshold_grid: np.ndarray  # grid-search threshold per row
    threshold: np.ndarray  # the one applied (exact or grid)
    zeros_before: int
    zeros_after: int
    size: int
    search: str
    channelwise: bool

    @property
    def fraction_before(self) -> float:
        return self.zeros_before / self.size if self.size else 0.0

    @property
    def fraction_after(self) -> float:
        return self.zeros_after / self.size if self.size else 0.0


def allowed_zeros(fraction: float, n: int) -> int:
    """The largest ``K`` with ``K / n <= fraction`` (the same float test the property checks use)."""
    if n == 0:
        return 0
    k = min(n, max(0, int(np.floor(fraction * n))))
    while k < n and (k + 1) / n <= fraction:
        k += 1
    while k > 0 and k / n > fraction:
        k -= 1
    return k


def caps(max_abs: np.ndarray, value_max: float, value_maxratio: float) -> np.ndarray:
    """Per-row cap in float64 (comparisons with float32/16 weights are then exact)."""
    m = np.asarray(max_abs, dtype=np.float64)
    return np.minimum(np.float64(value_max), np.float64(value_maxratio) * m)


def _abs_rows(rows: np.ndarray) -> np.ndarray:
    # float16 magnitudes are exact in float32, and numpy's partition is much faster there
    a = np.abs(rows)
    return a.astype(np.float32) if a.dtype == np.float16 else a


def exact_thresholds(a: np.ndarray, k: int, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact threshold, bound) per row of magnitudes ``a`` (rows × n) with ``k`` allowed zeros."""
    rows, n = a.shape
    if k >= n:
        bound = cap.copy()
        below = a
    else:
        part = np.partition(a, k, axis=1)
        bound = np.minimum(part[:, k].astype(np.float64), cap)
        below = part[:, :k]  # every magnitude smaller than a_(K) is in here
    if below.shape[1] == 0:
        return np.zeros(rows), bound
    masked = np.where(below < bound[:, None], below, 0)
    return masked.max(axis=1).astype(np.float64), bound


def _last_grid_index(base: np.ndarray, step: np.ndarray, bound: np.ndarray, limit: float) -> np.ndarray:
    """Largest integer ``i`` in [0, limit] with ``base + i * step < bound`` (0 when none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.ceil((bound - base) / step) - 1
    guess = np.where(np.isfinite(guess), guess, 0)
    i = np.clip(guess, 0, limit)
    # float rounding can put the guess one off either way; settle it with the same expression
    for _ in range(2):
        i = np.where((i > 0) & (base + i * step >= bound), i - 1, i)
        i = np.where((i < limit) & (base + (i + 1) * step < bound), i + 1, i)
    return i


def grid_thresholds(max_abs: np.ndarray, bound: np.ndarray, step_factor: float) -> np.ndarray:
    """The original's coarse-then-fine grid threshold per row (see the module docstring)."""
    step = np.asarray(max_abs, np.float64) * np.float64(step_factor)
    coarse = step * GRID_COARSE
    ok = step > 0
    step_s = np.where(ok, step, 1.0)
    coarse_s = np.where(ok, coarse, 1.0)
    zero = np.zeros_like(step_s)
    k = _last_grid_index(zero, coarse_s, bound, np.inf)
    base = k * coarse_s
    j = _last_grid_index(base, step_s, bound, GRID_COARSE - 1)
    t = base + j * step_s
    # no grid point below the bound (or an all-zero row): the original kept its initial 0
    return np.where(ok & (t < bound), t, 0.0)


def threshold_rows(rows: np.ndarray, fraction: float, *, value_max: float, value_maxratio: float,
                   search: str = "exact", step_factor: float = 1e-6) -> tuple[np.ndarray, ThresholdInfo]:
    """Threshold each row of a 2-D array independently (one row = one layer or one channel)."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, not {search!r}")
    rows = np.asarray(rows)
    a = _abs_rows(rows)
    r, n = a.shape
    max_abs = a.max(axis=1).astype(np.float64) if n else np.zeros(r)
    cap = caps(max_abs, value_max, value_maxratio)
    k = allowed_zeros(fraction, n)
    t_exact, bound = exact_thresholds(a, k, cap) if n else (np.zeros(r), np.zeros(r))
    t_grid = grid_thresholds(max_abs, bound, step_factor)
    t = t_exact if search == "exact" else t_grid
    # -0.0 and 0.0 are both "zero"; only nonzero weights are written, so untouched bits stay
    kill = (a <= t[:, None]) & (rows != 0)
    zeros_before = int(n * r - np.count_nonzero(rows))
    new = np.where(kill, np.zeros((), rows.dtype), rows) if kill.any() else rows.copy()
    info = ThresholdInfo(max_abs=max_abs, cap=cap, threshold_exact=t_exact, threshold_grid=t_grid,
                         threshold=t, zeros_before=zeros_before,
                         zeros_after=zeros_before + int(np.count_nonzero(kill)), size=int(n * r),
                         search=search, channelwise=r > 1)
    return new, info


def threshold_array(w: np.ndarray, fraction: float, *, value_max: float = 0.2, value_maxratio: float = 0.2,
                    search: str = "exact", channelwise: bool = False, step_factor: float = 1e-6,
                    channel_axis: int = 0) -> tuple[np.ndarray, ThresholdInfo]:
    """Zero the smallest-magnitude weights of ``w`` up to ``fraction``; a new array and what was done.

    ``channelwise`` applies the search (and the cap, from that channel's max) to each slice along
    ``channel_axis`` (the output-channel axis: 0 for Conv/ONNX Gemm with transB=1, -1 for MatMul).
    The dtype and shape of ``w`` are kept; ``w`` is not modified.
    """
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"threshold_array needs a float array, got {w.dtype}")
    if channelwise and w.ndim:
        moved = np.moveaxis(w, channel_axis, 0)
        new, info = threshold_rows(
            moved.reshape(moved.shape[0], math.prod(moved.shape[1:])),
            fraction,
            value_max=value_max,
            value_maxratio=value_maxratio,
            search=search,
            step_factor=step_factor,
        )
        new = np.moveaxis(new.reshape(moved.shape), 0, channel_axis)
        info = ThresholdInfo(**{**info.__dict__, "channelwise": True})
    else:
        new, info = threshold_rows(w.reshape(1, -1), fraction, value_max=value_max,
                                   value_maxratio=value_maxratio, search=search, step_factor=step_factor)
        new = new.reshape(w.shape)
    return np.require(new, requirements="C"), info


def pooled_threshold(arrays: list[np.ndarray], layer_caps: list[float], fraction: float) -> float:
    """One exact magnitude threshold over several weight arrays pooled together (``--global``).

    A weight counts as zeroable only below its own array's cap; existing zeros count as zeros.
    The result ``t`` keeps ``#{zeroable |w| <= t} + #{existing zeros}`` within ``fraction`` of all
    pooled weights; apply it per array as ``|w| <= t and |w| < cap``.
    """
    if not arrays:
        return 0.0
    dtype = np.result_type(np.float32, *[a.dtype for a in arrays])
    keys = np.empty(sum(a.size for a in arrays), dtype=dtype)
    pos = 0
    for w, cap in zip(arrays, layer_caps):
        flat = np.abs(w.reshape(-1))
        keys[pos:pos + flat.size] = np.where((flat < np.float64(cap)) | (flat == 0), flat, np.inf)
        pos += flat.size
    k = allowed_zeros(fraction, keys.size)
    if k >= keys.size:
        bound, below = np.inf, keys
    else:
        keys.partition(k)  # in place: the pool is ours
        bound, below = keys[k], keys[:k]
    below = below[below < bound]
    return float(below.max()) if below.size else 0.0
