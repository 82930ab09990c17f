"""Exact fixed-point values inside a layer, and the integer kernel of every step.

A :class:`Fixed` is ``v * 2**-shift / div`` with ``v`` an int64 array and ``shift``/``div`` integer
arrays broadcastable to it (a per-channel shift after a per-channel weight; an average's count).
Steps keep values exact: a product adds shifts, a sum aligns its operands by *left* shifts (never
losing a bit), pooling keeps the shift, an average multiplies ``div``. Only the layer's output
quantizer rounds (:func:`onnxsq.simulate.rounding.requantize`).

A kernel that meets a value it cannot keep exact (e.g. a reshape of a per-channel shift) raises
:class:`NotInteger`, and the layer is computed as a float island instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels as K


class NotInteger(Exception):
    """This step, on these values, has no exact integer form (the layer falls back to float)."""


@dataclass
class Fixed:
    v: np.ndarray
    shift: np.ndarray
    div: np.ndarray
    const: bool = False  # a weight: the same array every batch (kernels cache its conversions)

    @classmethod
    def of(cls, v: np.ndarray, shift: Any, div: Any = 1) -> Fixed:
        """Integer ``v`` as it is (int8..int64: kernels widen what they compute), shift and divisor as int64."""
        v = np.asarray(v)
        if v.dtype.kind not in "iu":
            v = v.astype(np.int64)
        return cls(v, np.asarray(shift, dtype=np.int64), np.asarray(div, dtype=np.int64))

    @property
    def undivided(self) -> bool:
        """No divisor (every element's is 1)."""
        d = self.div
        return int(d) == 1 if d.ndim == 0 else bool((d == 1).all())

    @property
    def plain(self) -> bool:
        """Per-tensor shift and no divisor: shape ops may move elements freely."""
        return self.shift.size == 1 and self.undivided

    @property
    def uniform(self) -> bool:
        """One shift and one divisor for every element (shape ops may move them)."""
        s, d = self.shift, self.div
        if s.ndim == 0 and d.ndim == 0:
            return True
        return bool((s == s.flat[0]).all() and (d == d.flat[0]).all())

    def moved(self, v: np.ndarray) -> Fixed:
        """The same scale on rearranged elements (shape ops; integer types kept)."""
        if not self.uniform:
            raise NotInteger("a shape op on a per-channel or position-dependent average")
        s, d = self.shift, self.div
        return Fixed(np.asarray(v), s if s.ndim == 0 else s.flat[0].reshape(()), d if d.ndim == 0 else
                     d.flat[0].reshape(()))

    def to_float(self) -> np.ndarray:
        return (self.v * np.ldexp(1.0, -self.shift) / self.div).astype(np.float32)


def align(values: list[Fixed]) -> tuple[list[np.ndarray], np.ndarray]:
    """Operands brought to their finest common shift by exact left shifts (divisors must be 1)."""
    if not all(f.undivided for f in values):
        raise NotInteger("a sum of averaged values")
    common = values[0].shift
    for f in values[1:]:
        common = np.maximum(common, f.shift)
    out = []
    for f in values:  # only what needs a shift is shifted (a bias at the accumulator's shift is added as is)
        diff = common - f.shift
        v = f.v.astype(np.int64, copy=False)
        out.append(np.left_shift(v, diff) if (diff.any() if diff.ndim else int(diff)) else v)
    return out, common


def _channel_shift(w: Fixed, ndim: int, axis: int) -> np.ndarray:
    """A weight's shift along its output-channel axis as a shape broadcastable to an ``ndim`` output
    whose channels are on ``axis``."""
    s = w.shift
    if s.size == 1:
        return s.reshape(())
    shape = [1] * ndim
    shape[axis] = s.size
    return s.reshape(shape)


def _bias(acc: Fixed, b: Fixed | None, axis: int) -> Fixed:
    if b is None:
        return acc
    shape = [1] * acc.v.ndim
    shape[axis] = b.v.size
    bias = Fixed(b.v.reshape(shape), b.shift.reshape(shape) if b.shift.size > 1 else b.shift.reshape(()), b.div)
    (a, c), common = align([acc, bias])
    return Fixed(a + c, common, np.asarray(1))


def k_conv(step, x: Fixed, w: Fixed, b: Fixed | None = None) -> Fixed:
    if not x.plain:
        raise NotInteger("a convolution of a per-channel value")
    a = step.attrs
    nd = w.v.ndim - 2
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    if step.op == "Conv":
        pads = K.conv_pads(x.v.shape[2:], w.v.shape[2:], strides, dil, a.get("pads"), a.get("auto_pad", "NOTSET"))
        acc = K.conv(x.v, w.v, strides=strides, pads=pads, dilations=dil, group=a.get("group", 1))
        ws = _channel_shift(w, acc.ndim, 1)
    else:
        pads, opad = K.conv_transpose_pads(x.v.shape[2:], w.v.shape[2:], strides, dil, a)
        group = a.get("group", 1)
        acc = K.conv_transpose(x.v, w.v, strides=strides, pads=pads, dilations=dil, group=group, output_padding=opad)
        if w.shift.size > 1:
            if w.shift.shape[1] != w.v.shape[1] or group != 1:
                raise NotInteger("ConvTranspose weight scales not along its output channels")
            ws = w.shift.reshape([1, -1] + [1] * nd)
        else:
            ws = w.shift.reshape(())
    return _bias(Fixed.of(acc, x.shift + ws), b, 1)


def k_gemm(step, a_: Fixed, b_: Fixed, c: Fixed | None = None) -> Fixed:
    at = step.attrs
    av, bv = a_.v, b_.v
    ash, bsh = a_.shift, b_.shift
    if at.get("transA", 0):
        av, ash = av.T, (ash.T if ash.size > 1 else ash)
    if at.get("transB", 0):
        bv = K.weight_cached(bv, "T", lambda: np.ascontiguousarray(bv.T)) if b_.const else bv.T
        bsh = bsh.T if bsh.size > 1 else bsh
    if ash.size > 1 or (bsh.size > 1 and bsh.shape[0] != 1):
        raise NotInteger("Gemm scales along the reduced axis")
    acc = Fixed.of(K.exact_matmul(av, bv, b_const=b_.const), ash.reshape(()) + bsh)
    return _bias(acc, c, 1)


def k_matmul(step, a_: Fixed, b_: Fixed) -> Fixed:
    b_reduced = b_.shift.shape[-2] if b_.shift.ndim >= 2 else 1
    if a_.shift.size > 1 or (b_.shift.size > 1 and (b_reduced != 1 or b_.shift.ndim < 2)):
        raise NotInteger("MatMul scales along the reduced axis")
    return Fixed.of(K.exact_matmul(a_.v, b_.v, b_const=b_.const), a_.shift.reshape(()) + b_.shift)


def _add(values: list[Fixed]) -> Fixed:
    vs, common = align(values)
    total = vs[0]
    for v in vs[1:]:
        total = total + v
    return Fixed(total, common, np.asarray(1))


def k_sub(step, a_: Fixed, b_: Fixed) -> Fixed:
    (x, y), common = align([a_, b_])
    return Fixed(x - y, common, np.asarray(1))


def k_mul(step, a_: Fixed, b_: Fixed) -> Fixed:
    return Fixed(a_.v.astype(np.int64) * b_.v, a_.shift + b_.shift, a_.div * b_.div)


def k_clip(step, x: Fixed, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> Fixed:
    lo = step.attrs.get("min") if lo is None and "min" in step.attrs else lo
    hi = step.attrs.get("max") if hi is None and "max" in step.attrs else hi
    v = x.v
    unit = np.ldexp(1.0, x.shift) * x.div  # integer steps per 1.0
    if lo is not None:
        v = np.maximum(v, np.ceil(float(lo) * unit).astype(np.int64))
    if hi is not None:
        v = np.minimum(v, np.floor(float(hi) * unit).astype(np.int64))
    return Fixed(v, x.shift, x.div)


def k_avgpool(step, x: Fixed) -> Fixed:
    if step.op == "AveragePool":
        sums, counts = K.avg_pool_sums(x.v, step.attrs)
        return Fixed(sums, x.shift, x.div * counts)
    if step.op == "GlobalAveragePool":
        axes = tuple(range(2, x.v.ndim))
        keep = True
    else:
        axes_attr = step.attrs.get("axes")
        axes = tuple(a % x.v.ndim for a in axes_attr) if axes_attr is not None else tuple(range(x.v.ndim))
        keep = bool(step.attrs.get("keepdims", 1))
    count = int(np.prod([x.v.shape[a] for a in axes]))
    if x.shift.size > 1 and any(x.shift.shape[a] > 1 for a in axes if a < x.shift.ndim):
        raise NotInteger("an average across differently scaled channels")
    shift = x.shift if keep or x.shift.size == 1 else np.squeeze(x.shift, axis=axes)
    return Fixed(x.v.sum(axis=axes, keepdims=keep, dtype=np.int64), shift, x.div * count)


KERNELS: dict[str, Callable[..., Any]] = {
    "Conv": k_conv, "ConvTranspose": k_conv, "Gemm": k_gemm, "MatMul": k_matmul, "Sub": k_sub, "Mul": k_mul,
    "Clip": k_clip, "AveragePool": k_avgpool, "GlobalAveragePool": k_avgpool, "ReduceMean": k_avgpool,
}
