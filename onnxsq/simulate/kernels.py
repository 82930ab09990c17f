"""Integer kernels on int64 numpy arrays, batch at a time: convolution (N-D, groups, depthwise,
dilation, strides, pads), transposed convolution, matrix products, max and average pooling, nearest
resize. Every result is exact: products and sums of integers, never rounded.

Matrix products run in float BLAS where that is provably exact: every partial sum is bounded by
``K * max|a| * max|b|``, so below ``2**24`` float32 is exact whatever the summation order, below
``2**53`` float64 is; beyond, numpy's int64 matmul (slow, never met with 8-bit operands).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53


def exact_dtype(k: int, amax: int, bmax: int) -> np.dtype:
    """The cheapest dtype whose matmul of ``k`` products of magnitudes ``amax``, ``bmax`` is exact."""
    bound = k * amax * bmax
    if bound < F32_EXACT:
        return np.dtype(np.float32)
    if bound < F64_EXACT:
        return np.dtype(np.float64)
    return np.dtype(np.int64)


_CACHE: dict[tuple, tuple[np.ndarray, object]] = {}
_CACHE_BYTES = [0]
CACHE_LIMIT = 1 << 30


def weight_cached(w: np.ndarray, tag: object, make) -> object:
    """``make()`` for a weight array, computed once per (array, tag): converted and transposed
    weights are reused across batches. Keyed by identity, the array kept alive beside its entry."""
    key = (id(w), tag)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is w:
        return hit[1]
    value = make()
    size = getattr(value, "nbytes", 0)
    if _CACHE_BYTES[0] + size > CACHE_LIMIT:
        _CACHE.clear()
        _CACHE_BYTES[0] = 0
    _CACHE[key] = (w, value)
    _CACHE_BYTES[0] += size
    return value


def _absmax(a: np.ndarray) -> int:
    return int(max(abs(int(a.max(initial=0))), abs(int(a.min(initial=0))))) if a.size else 0


def _colsum_max(b: np.ndarray) -> int:
    """The largest sum of |b| along the reduced axis (-2) of a weight."""
    return int(np.abs(b.astype(np.int64)).sum(axis=-2).max(initial=0)) if b.size else 0


def exact_matmul(a: np.ndarray, b: np.ndarray, *, b_const: bool = False, amax: int | None = None) -> np.ndarray:
    """``a @ b`` of integer arrays, exactly, as int64; ``b_const``: ``b`` is a weight (its float copies
    and bounds are cached).

    Every partial sum of a row-by-column product is bounded by ``min(sum|a_row| * max|b|,
    max|a| * sum|b_col|)``: below ``2**24`` one float32 product is exact. Otherwise ``K`` is cut into
    chunks that cannot round (when the chunks' partial results are cheap to sum), or the product runs
    in float64 (exact below ``2**53``). ``amax``: ``max|a|`` when the caller knows it (a convolution's
    im2col matrix holds its input's values: the bound is taken from the input, never the copy)."""
    k = a.shape[-1]
    if b_const:
        bmax = weight_cached(b, "absmax", lambda: _absmax(b))
        bcol = weight_cached(b, "colsum", lambda: _colsum_max(b))
    else:
        bmax = _absmax(b)
        bcol = k * bmax
    known = amax is not None
    amax = _absmax(a) if amax is None else amax
    bound = min(k * amax * bmax, amax * bcol)
    if bound >= F32_EXACT and a.size and not known:
        bound = min(bound, int(np.abs(a).sum(axis=-1, dtype=np.int64).max()) * bmax)
    per = max(amax * bmax, 1)
    chunk = max(1, (F32_EXACT - 1) // per)
    rows = a.size // max(k, 1)
    chunks = -(-k // chunk)
    # float32 chunks cost a conversion and an add of the (rows x N) result each: worth it while that is
    # small next to the product itself (few rows: fully connected layers at a small batch)
    if bound < F32_EXACT or (per < F32_EXACT and (chunks <= 2 or rows * chunks <= 4 * k)):
        bf = (weight_cached(b, np.float32, lambda: np.ascontiguousarray(b, dtype=np.float32)) if b_const
              else np.ascontiguousarray(b, dtype=np.float32))
        af = np.ascontiguousarray(a, dtype=np.float32)
        if bound < F32_EXACT:
            return np.matmul(af, bf).astype(np.int64)
        out = None
        for start in range(0, k, chunk):
            part = np.matmul(af[..., start:start + chunk], bf[..., start:start + chunk, :]).astype(np.int64)
            out = part if out is None else out + part
        return out
    if bound < F64_EXACT:
        bf = (weight_cached(b, np.float64, lambda: np.ascontiguousarray(b, dtype=np.float64)) if b_const
              else np.ascontiguousarray(b, dtype=np.float64))
        return np.matmul(np.asarray(a, dtype=np.float64), bf).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


def conv_pads(in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
              pads: Sequence[int] | None, auto_pad: str) -> list[int]:
    """Explicit pads ``[begin..., end...]`` for Conv/pooling from ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    return list(pads) if pads else [0] * (2 * nd)


def _windows(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> np.ndarray:
    """Sliding windows over the trailing ``len(kernel)`` axes: shape ``(*lead, *out, *kernel)``."""
    nd = len(kernel)
    axes = tuple(range(x.ndim - nd, x.ndim))
    ext = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = sliding_window_view(x, ext, axis=axes)
    index = (Ellipsis,) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    lead = (slice(None),) * (x.ndim - nd)
    return win[lead + index[1:]]


def conv(x: np.ndarray, w: np.ndarray, *, strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
         group: int = 1) -> np.ndarray:
    """Integer convolution (zero padding: zero point 0), ``x`` ``(N, C, *S)``, ``w`` ``(M, C/group, *K)``.

    im2col in channels-last order (each window's taps hold ``C/group`` contiguous channels, so the
    copy runs over contiguous memory), then one exact BLAS product per group."""
    nd = w.ndim - 2
    kernel = w.shape[2:]
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    if cg == 1 and group == c and m == c:
        return _depthwise(x, w, strides, pads, dilations)
    kp = int(np.prod(kernel))
    mg = m // group
    amax = _absmax(x)
    xh = np.moveaxis(x, 1, -1).astype(np.float32)  # (N, *S, C), contiguous
    if any(pads):
        xh = np.pad(xh, [(0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)] + [(0, 0)])
    if group == 1 and nd == 2 and all(st == 1 for st in strides):
        out = _conv_taps(xh, w, amax, dilations)
        if out is not None:
            return out
    ext = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = sliding_window_view(xh, ext, axis=tuple(range(1, nd + 1)))  # (N, *O_full, C, *ext)
    index = ((slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),)
             + tuple(slice(None, None, d) for d in dilations))
    win = win[index]
    out_sp = win.shape[1:1 + nd]
    p = int(np.prod(out_sp))
    if group == 1:
        order = (0, *range(1, nd + 1), *range(nd + 2, 2 * nd + 2), nd + 1)  # (N, *O, *K, C)
        cols = np.transpose(win, order).reshape(n * p, kp * c)
    else:  # (G, N, *O, *K, Cg): one batched product over the groups
        grouped = win.reshape(n, *out_sp, group, cg, *kernel)
        order = (nd + 1, 0, *range(1, nd + 1), *range(nd + 3, 2 * nd + 3), nd + 2)
        cols = np.transpose(grouped, order).reshape(group, n * p, kp * cg)
    # (G, K*cg, Mg), the same array object every batch, so the product's own caches (float copies,
    # bounds) hit
    wk = weight_cached(w, ("conv", group), lambda: np.ascontiguousarray(np.transpose(
        w.reshape(group, mg, cg, kp), (0, 3, 2, 1)).reshape(group, kp * cg, mg)))
    if group == 1:
        wk = weight_cached(wk, "group0", lambda: wk[0])
        out = exact_matmul(cols, wk, b_const=True, amax=amax).reshape(n, *out_sp, m)
    else:
        out = exact_matmul(cols, wk, b_const=True, amax=amax)  # (G, N*P, Mg)
        out = np.moveaxis(out, 0, 1).reshape(n, *out_sp, m)
    return np.moveaxis(out, -1, 1)


def _conv_taps(xh: np.ndarray, w: np.ndarray, amax: int, dilations: Sequence[int]) -> np.ndarray | None:
    """A stride-1 2-D convolution without im2col: one product per kernel tap of a *contiguous* slice of
    the padded channels-last input, flattened over the padded width, with that tap's ``(C, M)``
    weights, summed (the output is computed across the padded width and cut to its own).

    Exact: every partial sum of the taps' products is one of the full sum's, bounded by
    ``max|x| * max_m sum|w_m|``: float32 below ``2**24``, float64 below ``2**53``; beyond, None (the
    caller's im2col takes the int64 path)."""
    n, hp, wp, c = xh.shape
    m, _, kh, kw = w.shape
    bound = amax * weight_cached(w, "colsum4", lambda: int(np.abs(w.reshape(m, -1).astype(np.int64))
                                                           .sum(axis=1).max(initial=0)))
    dtype = np.float32 if bound < F32_EXACT else np.float64 if bound < F64_EXACT else None
    if dtype is None:
        return None
    oh, ow = hp - (kh - 1) * dilations[0], wp - (kw - 1) * dilations[1]
    length = oh * wp - (kw - 1) * dilations[1]  # rows of the last output row past ow are never read
    taps = weight_cached(w, ("taps", dtype), lambda: np.ascontiguousarray(
        np.transpose(w, (2, 3, 1, 0)).reshape(kh * kw, c, m), dtype=dtype))
    flat = xh.astype(dtype, copy=False).reshape(n, hp * wp, c)
    acc = np.zeros((n, oh * wp, m), dtype=dtype)
    part = np.empty((n, length, m), dtype=dtype)
    for t, (a, b) in enumerate(itertools.product(range(kh), range(kw))):
        off = a * dilations[0] * wp + b * dilations[1]
        np.matmul(flat[:, off:off + length], taps[t], out=part)
        acc[:, :length] += part
    out = acc.reshape(n, oh, wp, m)[:, :, :ow]
    return np.moveaxis(out, -1, 1).astype(np.int64)


def _depthwise(x: np.ndarray, w: np.ndarray, strides: Sequence[int], pads: Sequence[int],
               dilations: Sequence[int]) -> np.ndarray:
    """Depthwise convolution: a multiply-add per kernel tap over channels-last data (the channel axis
    innermost: contiguous, vectorized), in float32 where every partial sum stays below ``2**24``
    (exact), else in float64 (below ``2**53``) or int64."""
    nd = w.ndim - 2
    kernel = w.shape[2:]
    kp = int(np.prod(kernel))
    n, c = x.shape[:2]
    dtype = exact_dtype(kp, _absmax(x), weight_cached(w, "absmax", lambda: _absmax(w)))
    sp = x.shape[2:]
    xh = np.zeros((n, *(s + pads[i] + pads[i + nd] for i, s in enumerate(sp)), c), dtype=dtype)
    xh[(slice(None),) + tuple(slice(pads[i], pads[i] + s) for i, s in enumerate(sp))] = np.moveaxis(x, 1, -1)
    out_sp = [(xh.shape[1 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)]
    wc = weight_cached(w, ("depthwise", dtype), lambda: np.ascontiguousarray(w.reshape(c, kp).T, dtype=dtype))
    out = np.zeros((n, *out_sp, c), dtype=dtype)
    tmp = np.empty_like(out)
    for t, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
        index = tuple(slice(tp * d, tp * d + (o - 1) * st + 1, st)
                      for tp, d, o, st in zip(tap, dilations, out_sp, strides))
        np.multiply(xh[(slice(None),) + index], wc[t], out=tmp)
        out += tmp
    return np.moveaxis(out, -1, 1).astype(np.int64)


def conv_transpose(x: np.ndarray, w: np.ndarray, *, strides: Sequence[int], pads: Sequence[int],
                   dilations: Sequence[int], group: int = 1, output_padding: Sequence[int] | None = None) -> np.ndarray:
    """Integer transposed convolution, ``x`` ``(N, C, *S)``, ``w`` ``(C, M/group, *K)``; ``pads`` explicit."""
    nd = w.ndim - 2
    kernel = w.shape[2:]
    n, c = x.shape[:2]
    sp = x.shape[2:]
    mg = w.shape[1]
    cg = c // group
    kp = int(np.prod(kernel))
    opad = list(output_padding) if output_padding else [0] * nd
    full = [(s - 1) * st + (k - 1) * d + 1 + op for s, st, k, d, op in zip(sp, strides, kernel, dilations, opad)]
    out = np.zeros((n, group * mg, *full), dtype=np.int64)
    p = int(np.prod(sp))
    for g in range(group):
        xg = x[:, g * cg:(g + 1) * cg].reshape(n, cg, p)
        wg = w[g * cg:(g + 1) * cg].reshape(cg, mg * kp)
        cols = exact_matmul(np.swapaxes(xg, 1, 2), wg[None]).reshape(n, *sp, mg, kp)
        cols = np.moveaxis(cols, 1 + nd, 1)  # (N, Mg, *S, Kp)
        for t, tap in enumerate(itertools.product(*(range(k) for k in kernel))):
            index = tuple(slice(tp * d, tp * d + (s - 1) * st + 1, st)
                          for tp, d, s, st in zip(tap, dilations, sp, strides))
            out[(slice(None), slice(g * mg, (g + 1) * mg)) + index] += cols[..., t]
    crop = tuple(slice(pads[i], full[i] - pads[i + nd]) for i in range(nd))
    return out[(slice(None), slice(None)) + crop]


def conv_transpose_pads(in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                        dilations: Sequence[int], attrs: dict) -> tuple[list[int], list[int]]:
    """ConvTranspose's explicit pads and output padding from ``pads``/``output_shape``/``auto_pad``."""
    nd = len(kernel)
    opad = list(attrs.get("output_padding", [0] * nd))
    out_shape = attrs.get("output_shape")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if out_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return list(attrs.get("pads", [0] * (2 * nd))), opad
    if out_shape is None:
        out_shape = [s * st for s, st in zip(in_shape, strides)]
    out_shape = list(out_shape)[-nd:]
    begin, end = [], []
    for i in range(nd):
        total = strides[i] * (in_shape[i] - 1) + opad[i] + (kernel[i] - 1) * dilations[i] + 1 - out_shape[i]
        total = max(total, 0)
        if auto_pad == "SAME_UPPER":
            begin.append(total // 2)
        else:
            begin.append(total - total // 2)
        end.append(total - begin[-1])
    return begin + end, opad


def pool_geometry(in_shape: Sequence[int], attrs: dict) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """``kernel, strides, dilations, pads, extra`` of a pooling node; ``extra``: end padding that
    ceil_mode adds beyond ``pads`` (windows there are cut at the padded edge)."""
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    pads = conv_pads(in_shape, kernel, strides, dilations, attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    extra = [0] * nd
    if attrs.get("ceil_mode", 0):
        for i, size in enumerate(in_shape):
            span = size + pads[i] + pads[i + nd] - ((kernel[i] - 1) * dilations[i] + 1)
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= size + pads[i]:
                out -= 1
            reach = (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
            extra[i] = max(0, reach - (size + pads[i] + pads[i + nd]))
    return kernel, strides, dilations, pads, extra


def max_pool(x: np.ndarray, attrs: dict) -> np.ndarray:
    """Integer max pooling (padding never wins): an elementwise maximum over the kernel's taps, each a
    strided view of the (padded) input."""
    nd = len(attrs["kernel_shape"])
    kernel, strides, dilations, pads, extra = pool_geometry(x.shape[2:], attrs)
    lead = x.ndim - nd
    if any(pads) or any(extra):
        low = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
        sp = x.shape[lead:]
        xp = np.full(x.shape[:lead] + tuple(s + pads[i] + pads[i + nd] + extra[i] for i, s in enumerate(sp)), low,
                     dtype=x.dtype)
        xp[(Ellipsis,) + tuple(slice(pads[i], pads[i] + s) for i, s in enumerate(sp))] = x
    else:
        xp = x
    out_sp = [(xp.shape[lead + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(nd)]
    out = None
    for tap in itertools.product(*(range(k) for k in kernel)):
        index = (Ellipsis,) + tuple(slice(t * d, t * d + (o - 1) * st + 1, st)
                                    for t, d, o, st in zip(tap, dilations, out_sp, strides))
        if out is None:
            out = xp[index].copy(order="K")  # the input's memory order (channels last stays so)
        else:
            np.maximum(out, xp[index], out=out)
    return out


def avg_pool_sums(x: np.ndarray, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Window sums (exact) and the count each is divided by (``count_include_pad`` counts pads, never
    the ceil_mode overhang)."""
    nd = len(attrs["kernel_shape"])
    kernel, strides, dilations, pads, extra = pool_geometry(x.shape[2:], attrs)
    widths = [(pads[i], pads[i + nd] + extra[i]) for i in range(nd)]
    xp = np.pad(x, [(0, 0)] * (x.ndim - nd) + widths)
    sums = _windows(xp, kernel, strides, dilations).sum(axis=tuple(range(-nd, 0)), dtype=np.int64)
    ones = np.ones(x.shape[2:], dtype=np.int64)
    if attrs.get("count_include_pad", 0):
        ones = np.pad(ones, [(p, q) for p, q in zip(pads[:nd], pads[nd:])], constant_values=1)
        ones = np.pad(ones, [(0, e) for e in extra])
    else:
        ones = np.pad(ones, widths)
    counts = _windows(ones, kernel, strides, dilations).sum(axis=tuple(range(-nd, 0)), dtype=np.int64)
    return sums, counts


def nearest_index(in_size: int, out_size: int, scale: float, mode: str, nearest_mode: str) -> np.ndarray:
    """The source index of every output position of a nearest Resize along one axis (float32 math,
    as onnxruntime computes coordinates)."""
    x = np.arange(out_size, dtype=np.float32)
    s = np.float32(scale)
    if mode == "half_pixel":
        src = (x + np.float32(0.5)) / s - np.float32(0.5)
    elif mode == "pytorch_half_pixel":
        src = (x + np.float32(0.5)) / s - np.float32(0.5) if out_size > 1 else np.zeros_like(x)
    elif mode == "align_corners":
        src = x * np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(x)
    elif mode == "asymmetric":
        src = x / s
    elif mode == "tf_half_pixel_for_nn":
        src = (x + np.float32(0.5)) / s
    else:
        raise ValueError(f"coordinate_transformation_mode {mode!r}")
    if nearest_mode == "round_prefer_floor":
        idx = np.where(src == np.floor(src) + np.float32(0.5), np.floor(src), np.round(src))
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(src + np.float32(0.5))
    elif nearest_mode == "floor":
        idx = np.floor(src)
    elif nearest_mode == "ceil":
        idx = np.ceil(src)
    else:
        raise ValueError(f"nearest_mode {nearest_mode!r}")
    return np.clip(idx.astype(np.int64), 0, in_size - 1)


def resize_nearest(x: np.ndarray, out_shape: Sequence[int], scales: Sequence[float], mode: str,
                   nearest_mode: str) -> np.ndarray:
    """Nearest Resize of an integer array: a gather along every axis whose size changes."""
    out = x
    for axis, (i, o) in enumerate(zip(x.shape, out_shape)):
        if i == o and scales[axis] == 1:
            continue
        out = np.take(out, nearest_index(i, o, scales[axis], mode, nearest_mode), axis=axis)
    return out


def ceil_log2(value: int) -> int:
    """Bits of a signed accumulator that holds ``±value``."""
    return 1 + max(1, math.ceil(math.log2(value + 1))) if value > 0 else 1
