"""Compiled MAC steps (Conv, Gemm, MatMul with constant weights) for :mod:`.plan`: the weights
converted and laid out once, the padded input and the accumulator preallocated, the bias added in
place, and the float dtype chosen from *static* bounds (the input's integer type and the weights),
so that no call measures its data to stay exact.

Every partial sum of a product is bounded by ``max|x| * sum|w|`` of its output channel (plus the
bias): below ``2**24`` float32 is exact whatever the summation order, below ``2**53`` float64 is.
Where the static bound is past ``2**24`` but below ``2**53``, each call checks its input's magnitude and
takes float32 when that keeps the sums below ``2**24`` (as the generic kernels decide), else float64.
Beyond, or where an accumulator of ``acc_bits`` could overflow (the generic step wraps it), no plan
is made and the generic kernel runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from . import kernels as K
from .fixed import Fixed

Range = tuple[int, int]  # the least and largest integer a value can hold
F32_EXACT, F64_EXACT = 1 << 24, 1 << 53


class Scratch:
    """Buffers shared by the compiled layers of one simulator, by role, shape, dtype and the step's place
    in its layer: layers run one after another, and a layer's buffers are dead once it has returned (its
    output is always a new array), so layers of the same geometry share them."""

    def __init__(self, arrays: dict | None = None, slot: int = 0) -> None:
        self.arrays: dict[tuple, np.ndarray] = {} if arrays is None else arrays
        self.slot = slot

    def at(self, slot: int) -> Scratch:
        """The buffers of the step at ``slot`` in its layer (never shared by two steps of one layer)."""
        return Scratch(self.arrays, slot)

    def get(self, role: object, shape: tuple[int, ...], dtype: np.dtype, zero: bool = False) -> np.ndarray:
        key = (role, self.slot, tuple(shape), np.dtype(dtype).str)
        a = self.arrays.get(key)
        if a is None:
            a = self.arrays[key] = (np.zeros if zero else np.empty)(shape, dtype=dtype)
        return a


def mac_step(step, args: list, result: Fixed, x_range: Range | None, acc_bits: int,
             on_acc: Callable[[np.ndarray], None], pool: Scratch) -> tuple[Callable, Range] | None:
    """``(fn, range)``: ``fn(x)`` the step's accumulator (bias included) for the integer input ``x``;
    None where no compiled form applies (the generic kernel runs). ``on_acc`` records the
    accumulator's largest magnitude (the report's observed accumulator bits); ``pool`` holds the buffers."""
    if x_range is None or len(args) < 2 or not isinstance(args[1], Fixed) or not args[1].const:
        return None
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 and isinstance(args[2], Fixed) else None
    if b is not None and not b.const:
        return None
    if step.op == "Conv" and w.v.ndim == 4 and x.v.ndim == 4:
        made = _conv(step, x, w, b, result, x_range, pool)
    elif step.op == "ConvTranspose" and w.v.ndim == 4 and x.v.ndim == 4:
        made = _conv_transpose(step, x, w, b, result, x_range, pool)
    elif step.op in ("Gemm", "MatMul") and w.v.ndim == 2 and not step.attrs.get("transA", 0):
        made = _matmul(step, x, w, b, result, x_range)
    else:
        return None
    if made is None:
        return None
    build, rng, (bound, dtype, per_max, bias_max) = made
    if bound >= 1 << (acc_bits - 1) or dtype is None:
        return None
    if dtype == np.float64:  # float32 where the data's own magnitude keeps every sum below 2**24
        fn = _pick(build, (F32_EXACT - 1 - bias_max) // max(per_max, 1))
    else:
        fn = build(dtype)

    def run(xv: np.ndarray) -> np.ndarray:
        acc = fn(xv)
        if acc.size:
            on_acc(acc)
        return acc

    return run, rng


def _pick(build: Callable, limit: int) -> Callable:
    """Float32 for inputs of magnitude up to ``limit``, float64 beyond (each form built when first needed:
    its buffers are as large as the layer's)."""
    made: dict[bool, Callable] = {}

    def fn(xv: np.ndarray) -> np.ndarray:
        small = bool(xv.size) and max(-int(xv.min()), int(xv.max())) <= limit
        if small not in made:
            made[small] = build(np.dtype(np.float32 if small else np.float64))
        return made[small](xv)

    return fn


def _bounds(wk: np.ndarray, bias: np.ndarray, x_range: Range) -> tuple[Range, tuple[int, np.dtype | None, int, int]]:
    """``wk`` ``(K, M)`` integer weights: the accumulator's range, and (its magnitude bound, the exact
    dtype, the largest ``sum|w|`` of a channel, the largest ``|bias|``)."""
    w = wk.astype(np.int64)
    pos, neg = np.clip(w, 0, None).sum(axis=0), np.clip(w, None, 0).sum(axis=0)
    lo_x, hi_x = x_range
    hi = pos * hi_x + neg * lo_x + bias
    lo = pos * lo_x + neg * hi_x + bias
    per = np.abs(w).sum(axis=0)
    bound = int((per * max(-lo_x, hi_x) + np.abs(bias)).max(initial=0))
    dtype = np.dtype(np.float32) if bound < F32_EXACT else np.dtype(np.float64) if bound < F64_EXACT else None
    sizes = (bound, dtype, int(per.max(initial=0)), int(np.abs(bias).max(initial=0)))
    return (int(lo.min(initial=0)), int(hi.max(initial=0))), sizes


def _bias_vector(b: Fixed | None, result: Fixed, acc_shift: np.ndarray, m: int) -> np.ndarray | None:
    """The bias as an int64 vector over the ``m`` output channels, when it adds as is (already at the
    accumulator's shift); None when it would need a shift (the generic kernel aligns it)."""
    if not np.all(np.asarray(acc_shift) == result.shift):
        return None
    if b is None:
        return np.zeros(m, dtype=np.int64)
    if b.v.size != m or not np.all(b.shift.reshape(-1) == np.asarray(result.shift).reshape(-1)):
        return None
    return b.v.reshape(-1).astype(np.int64)


def _matmul(step, x: Fixed, w: Fixed, b: Fixed | None, result: Fixed, x_range: Range):
    transposed = bool(step.attrs.get("transB", 0))  # the generic kernels' cached copies are shared (memory)
    wv = K.weight_cached(w.v, "T", lambda: np.ascontiguousarray(w.v.T)) if transposed else w.v
    ws = w.shift.T if transposed and w.shift.size > 1 else w.shift
    if step.op == "Gemm" and x.v.ndim != 2:
        return None
    bias = _bias_vector(b, result, x.shift.reshape(()) + ws, wv.shape[1])
    if bias is None:
        return None
    rng, sizes = _bounds(wv, bias, x_range)
    cuts = _chunks(wv, max(-x_range[0], x_range[1])) if sizes[1] == np.float64 else None
    if cuts is not None:  # float32 products over slices of K, each exact; their sum in float64 (exact)
        return _chunked(wv, bias, cuts), rng, (sizes[0], np.dtype(np.float32), *sizes[2:])

    def build(dtype: np.dtype) -> Callable:
        wf = _float_weights(wv, dtype)
        bf = bias.astype(dtype) if bias.any() else None

        def fn(xv: np.ndarray) -> np.ndarray:
            acc = np.matmul(xv.astype(dtype), wf)
            if bf is not None:
                acc += bf
            return acc

        return fn

    return build, rng, sizes


def _float_weights(wv: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``wv`` as a contiguous float array, the copy the generic kernels cache (one copy of the weights)."""
    return K.weight_cached(wv, dtype.type, lambda: np.ascontiguousarray(wv, dtype=dtype))


def _chunks(wv: np.ndarray, xmax: int, most: int = 16) -> list[int] | None:
    """Cuts of the reduced axis into slices whose products stay below ``2**24`` (each partial sum is
    bounded by ``xmax`` times the slice's sum of its rows' largest ``|w|``); None beyond ``most``."""
    rowmax = np.abs(wv.astype(np.int64)).max(axis=1) * max(xmax, 1)
    cuts, total = [0], 0
    for k, r in enumerate(rowmax.tolist()):
        if r >= F32_EXACT:
            return None
        if total + r >= F32_EXACT:
            cuts.append(k)
            total = 0
        total += r
    cuts.append(len(rowmax))
    return cuts if len(cuts) - 1 <= most else None


def _chunked(wv: np.ndarray, bias: np.ndarray, cuts: list[int]) -> Callable:
    def build(dtype: np.dtype) -> Callable:
        whole = _float_weights(wv, np.dtype(np.float32))
        parts = [whole[a:b] for a, b in zip(cuts, cuts[1:])]  # row blocks: contiguous views
        bf = bias.astype(np.float64)

        def fn(xv: np.ndarray) -> np.ndarray:
            xf = xv.astype(np.float32)
            acc = np.matmul(xf[..., cuts[0]:cuts[1]], parts[0]).astype(np.float64)
            for (a, b), part in zip(zip(cuts[1:], cuts[2:]), parts[1:]):
                acc += np.matmul(xf[..., a:b], part)
            acc += bf
            return acc

        return fn

    return build


def _conv(step, x: Fixed, w: Fixed, b: Fixed | None, result: Fixed, x_range: Range, pool: Scratch):
    a = step.attrs
    n, c, h, wd = x.v.shape
    m, cg, kh, kw = w.v.shape
    group = a.get("group", 1)
    depthwise = cg == 1 and group == c and m == c
    if group != 1 and not depthwise:
        return None
    strides, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads = K.conv_pads((h, wd), (kh, kw), strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))
    ws = w.shift.reshape(1, -1, 1, 1) if w.shift.size > 1 else w.shift.reshape(())
    bias = _bias_vector(b, result, x.shift + ws, m)
    if bias is None:
        return None
    wk = w.v.reshape(m, -1).T  # (cg*kh*kw, M): each output channel's weights in one column
    rng, sizes = _bounds(wk, bias, x_range)

    def build(dtype: np.dtype) -> Callable:
        geo = _Geometry(n, c, h, wd, kh, kw, strides, dil, pads, dtype, pool)
        if depthwise:
            return _depthwise(geo, w.v, bias)
        if strides == [1, 1] and c >= 2 and geo.oh * geo.ow >= 1024:  # measured: one product per tap wins on
            return _taps(geo, w.v, bias)  # large images; few channels or small images favour one im2col product
        return _im2col(geo, w.v, bias)

    return build, rng, sizes


class _Geometry:
    """A 2-D convolution's padded input buffer (channels last, zero borders written once) and sizes."""

    def __init__(self, n, c, h, wd, kh, kw, strides, dil, pads, dtype, pool: Scratch) -> None:
        self.n, self.c, self.kh, self.kw, self.strides, self.dil, self.dtype = n, c, kh, kw, strides, dil, dtype
        self.pool = pool
        self.hp, self.wp = h + pads[0] + pads[2], wd + pads[1] + pads[3]
        self.oh = (self.hp - (kh - 1) * dil[0] - 1) // strides[0] + 1
        self.ow = (self.wp - (kw - 1) * dil[1] - 1) // strides[1] + 1
        self.xbuf = pool.get(("padded", tuple(pads)), (n, self.hp, self.wp, c), dtype, zero=True)  # borders stay 0
        self.inner = self.xbuf[:, pads[0]:pads[0] + h, pads[1]:pads[1] + wd, :]

    def load(self, xv: np.ndarray) -> None:
        np.copyto(self.inner, xv.transpose(0, 2, 3, 1))  # integers: exact in the float dtype

    def tap_views(self) -> list[np.ndarray]:
        """Per kernel tap, the strided view of the padded input that tap multiplies."""
        (s0, s1), (d0, d1) = self.strides, self.dil
        return [self.xbuf[:, a * d0:a * d0 + (self.oh - 1) * s0 + 1:s0, b * d1:b * d1 + (self.ow - 1) * s1 + 1:s1, :]
                for a, b in itertools.product(range(self.kh), range(self.kw))]


def _taps(g: _Geometry, w: np.ndarray, bias: np.ndarray) -> Callable:
    """Stride 1: one product per tap of a contiguous slice of the padded input flattened over its
    width, summed (see :func:`onnxsq.simulate.kernels._conv_taps`)."""
    n, m, wp = g.n, w.shape[0], g.wp
    length = g.oh * wp - (g.kw - 1) * g.dil[1]
    taps = np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(g.kh * g.kw, g.c, m), dtype=g.dtype)
    offs = [a * g.dil[0] * wp + b * g.dil[1] for a, b in itertools.product(range(g.kh), range(g.kw))]
    flat = g.xbuf.reshape(n, g.hp * wp, g.c)
    acc = g.pool.get("acc", (n, g.oh * wp, m), g.dtype)  # read only where written (see ``rows``)
    part = g.pool.get("part", (n, length, m), g.dtype)
    head, rows = acc[:, :length], acc.reshape(n, g.oh, wp, m)[:, :, :g.ow]
    res = g.pool.get("res", (n, g.oh, g.ow, m), g.dtype)  # compact: what follows runs over contiguous memory
    view = res.transpose(0, 3, 1, 2)
    bf = bias.astype(g.dtype) if bias.any() else None

    def fn(xv: np.ndarray) -> np.ndarray:
        g.load(xv)
        np.matmul(flat[:, offs[0]:offs[0] + length], taps[0], out=head)
        for t in range(1, len(offs)):
            np.matmul(flat[:, offs[t]:offs[t] + length], taps[t], out=part)
            np.add(head, part, out=head)
        if bf is not None:
            np.add(rows, bf, out=res)
        else:
            np.copyto(res, rows)
        return view

    return fn


def _im2col(g: _Geometry, w: np.ndarray, bias: np.ndarray) -> Callable:
    """Strided: the taps copied side by side into a preallocated column buffer, one product."""
    n, m, kk = g.n, w.shape[0], g.kh * g.kw
    cols = g.pool.get("cols", (n, g.oh, g.ow, kk, g.c), g.dtype)
    views = g.tap_views()
    flat = cols.reshape(n * g.oh * g.ow, kk * g.c)
    wk = np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(kk * g.c, m), dtype=g.dtype)
    out = g.pool.get("res", (n * g.oh * g.ow, m), g.dtype)
    view = out.reshape(n, g.oh, g.ow, m).transpose(0, 3, 1, 2)
    bf = bias.astype(g.dtype) if bias.any() else None

    def fn(xv: np.ndarray) -> np.ndarray:
        g.load(xv)
        for t, v in enumerate(views):
            np.copyto(cols[:, :, :, t, :], v)
        np.matmul(flat, wk, out=out)
        if bf is not None:
            np.add(out, bf, out=out)
        return view

    return fn


def _depthwise(g: _Geometry, w: np.ndarray, bias: np.ndarray) -> Callable:
    """One multiply-add per tap over channels-last data (see :func:`onnxsq.simulate.kernels._depthwise`)."""
    wc = np.ascontiguousarray(w.reshape(g.c, g.kh * g.kw).T, dtype=g.dtype)
    views = g.tap_views()
    out = g.pool.get("res", (g.n, g.oh, g.ow, g.c), g.dtype)
    tmp = g.pool.get("part", out.shape, g.dtype)
    view = out.transpose(0, 3, 1, 2)
    bf = bias.astype(g.dtype) if bias.any() else None

    def fn(xv: np.ndarray) -> np.ndarray:
        g.load(xv)
        np.multiply(views[0], wc[0], out=out)
        for t in range(1, len(views)):
            np.multiply(views[t], wc[t], out=tmp)
            np.add(out, tmp, out=out)
        if bf is not None:
            np.add(out, bf, out=out)
        return view

    return fn


def _conv_transpose(step, x: Fixed, w: Fixed, b: Fixed | None, result: Fixed, x_range: Range,
                    pool: Scratch):
    """A 2-D transposed convolution: one product of the channels-last input with the weights of every
    tap, then each tap's part added into its strided place of the full output, which is cropped.
    Every partial sum of an output is one over some of its channel's terms: the bound holds."""
    a = step.attrs
    n, c, h, wd = x.v.shape
    _, m, kh, kw = w.v.shape
    if a.get("group", 1) != 1 or (w.shift.size > 1 and w.shift.shape[1] != m):
        return None
    (s0, s1), (d0, d1) = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    pads, opad = K.conv_transpose_pads((h, wd), (kh, kw), [s0, s1], [d0, d1], a)
    ws = w.shift.reshape(1, -1, 1, 1) if w.shift.size > 1 else w.shift.reshape(())
    bias = _bias_vector(b, result, x.shift + ws, m)
    if bias is None:
        return None
    per_tap = np.transpose(w.v, (0, 2, 3, 1))  # (C, kh, kw, M)
    rng, sizes = _bounds(per_tap.reshape(c * kh * kw, m), bias, x_range)
    full = ((h - 1) * s0 + (kh - 1) * d0 + 1 + opad[0], (wd - 1) * s1 + (kw - 1) * d1 + 1 + opad[1])

    def build(dtype: np.dtype) -> Callable:
        buf = pool.get("full", (n, *full, m), dtype)  # zeroed by every call
        xin = pool.get("input", (n, h, wd, c), dtype)
        wf = np.ascontiguousarray(per_tap.reshape(c, kh * kw * m), dtype=dtype)
        crop = buf[:, pads[0]:full[0] - pads[2], pads[1]:full[1] - pads[3], :]
        res = pool.get("res", crop.shape, dtype)
        view = res.transpose(0, 3, 1, 2)
        targets = [buf[:, i * d0:i * d0 + (h - 1) * s0 + 1:s0, j * d1:j * d1 + (wd - 1) * s1 + 1:s1, :]
                   for i, j in itertools.product(range(kh), range(kw))]
        bf = bias.astype(dtype)

        def fn(xv: np.ndarray) -> np.ndarray:
            np.copyto(xin, xv.transpose(0, 2, 3, 1))
            cols = np.matmul(xin.reshape(n * h * wd, c), wf).reshape(n, h, wd, kh * kw, m)
            buf.fill(0)
            for t, target in enumerate(targets):
                np.add(target, cols[:, :, :, t, :], out=target)
            np.add(crop, bf, out=res)
            return view

        return fn

    return build, rng, sizes
