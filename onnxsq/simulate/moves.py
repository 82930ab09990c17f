"""Shape ops on integer values (they move elements, never change them): Reshape, Flatten, Transpose,
Squeeze, Unsqueeze, Slice, Gather, Expand, Split, nearest Resize, a zero Pad (it adds exact zeros: 0 in
any scale); and the integer reductions."""

from __future__ import annotations

import numpy as np

from . import kernels as K
from .fixed import Fixed, NotInteger
from .program import Step


def shape_op(step: Step, v: np.ndarray, rest: list) -> np.ndarray:
    """Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Gather, Resize/Upsample (nearest)."""
    op, a = step.op, step.attrs
    if op == "Reshape":
        shape = [int(d) for d in np.asarray(rest[0]).ravel()]
        if not a.get("allowzero", 0):
            shape = [v.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return v.reshape(shape)
    if op == "Flatten":
        axis = a.get("axis", 1) % max(v.ndim, 1) if v.ndim else 0
        return v.reshape(int(np.prod(v.shape[:axis])), -1)
    if op == "Transpose":
        return np.transpose(v, a.get("perm"))
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None and rest and rest[0] is not None:
            axes = [int(i) for i in np.asarray(rest[0]).ravel()]
        if op == "Squeeze":
            return np.squeeze(v, axis=tuple(i % v.ndim for i in axes) if axes is not None else None)
        out_rank = v.ndim + len(axes)
        return np.expand_dims(v, tuple(sorted(i % out_rank for i in axes)))
    if op == "Slice":
        return v[slice_index(v.shape, a, rest)]
    if op == "Gather":
        return np.take(v, np.asarray(rest[0]).astype(np.int64), axis=a.get("axis", 0))
    if op == "Expand":
        shape = [int(d) for d in np.asarray(rest[0]).ravel()]
        return np.broadcast_to(v, np.broadcast_shapes(v.shape, tuple(shape)))
    if op in ("Resize", "Upsample"):
        return _resize(step, v, rest)
    if op == "Pad":
        return zero_pad(step, v, rest)
    raise NotInteger(f"{op} on integers")


def zero_pad(step: Step, v: np.ndarray, rest: list) -> np.ndarray:
    """A constant-mode Pad with value 0 (``pads`` input or attribute; ``axes`` input), non-negative pads."""
    pads = rest[0] if rest and rest[0] is not None else step.attrs.get("pads")
    value = rest[1] if len(rest) > 1 and rest[1] is not None else step.attrs.get("value", 0.0)
    if step.attrs.get("mode", "constant") != "constant" or np.any(np.asarray(value) != 0):
        raise NotInteger("Pad other than with zeros")
    pads = [int(p) for p in np.asarray(pads).ravel()]
    axes = [int(a) % v.ndim for a in np.asarray(rest[2]).ravel()] if len(rest) > 2 and rest[2] is not None \
        else list(range(v.ndim))
    if min(pads, default=0) < 0:
        raise NotInteger("Pad with negative pads (a crop)")
    width = [(0, 0)] * v.ndim
    for k, a in enumerate(axes):
        width[a] = (pads[k], pads[k + len(axes)])
    return np.pad(v, width)


def reduce(step: Step, x: Fixed, rest: list) -> Fixed:
    """ReduceSum (exact in int64), ReduceMax, ReduceMin over ``axes`` (attribute or input)."""
    if not x.plain:
        raise NotInteger(f"{step.op} of a per-channel or averaged value")
    axes = step.attrs.get("axes")
    if axes is None and rest and rest[0] is not None and np.asarray(rest[0]).size:
        axes = [int(a) for a in np.asarray(rest[0]).ravel()]
    if axes is None and step.attrs.get("noop_with_empty_axes", 0):
        return x
    axis = tuple(a % x.v.ndim for a in axes) if axes is not None else None
    keep = bool(step.attrs.get("keepdims", 1))
    if step.op == "ReduceSum":
        return Fixed(x.v.sum(axis=axis, keepdims=keep, dtype=np.int64), x.shift, x.div)
    fn = np.max if step.op == "ReduceMax" else np.min
    return Fixed(fn(x.v, axis=axis, keepdims=keep), x.shift, x.div)


def split(step: Step, v: np.ndarray, rest: list) -> list[np.ndarray]:
    """Split by the ``split`` input or attribute, else into equal parts (the last one smaller)."""
    axis = step.attrs.get("axis", 0) % v.ndim
    sizes = rest[0] if rest and rest[0] is not None else step.attrs.get("split")
    if sizes is None:
        parts = step.attrs.get("num_outputs", len(step.outputs))
        size = -(-v.shape[axis] // parts)
        sizes = [size] * (parts - 1) + [v.shape[axis] - size * (parts - 1)]
    return np.split(v, np.cumsum(np.asarray(sizes, dtype=np.int64).ravel())[:-1], axis=axis)


def slice_index(shape: tuple[int, ...], a: dict, rest: list) -> tuple[slice, ...]:
    """The index tuple of a Slice of an array of ``shape`` (``rest``: its starts/ends/axes/steps inputs)."""
    if rest:
        starts, ends = (np.asarray(r).ravel().tolist() for r in rest[:2])
        axes = np.asarray(rest[2]).ravel().tolist() if len(rest) > 2 and rest[2] is not None else None
        steps = np.asarray(rest[3]).ravel().tolist() if len(rest) > 3 and rest[3] is not None else None
    else:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * len(shape)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        n = shape[ax]
        index[ax] = slice(*slice(int(s), int(max(min(e, 2**62), -2**62)), int(st)).indices(n))
    return tuple(index)


def _resize(step: Step, v: np.ndarray, rest: list) -> np.ndarray:
    a = step.attrs
    scales = sizes = None
    if step.op == "Upsample" or len(rest) == 1:
        scales = np.asarray(rest[0], dtype=np.float32)
    else:
        if len(rest) > 1 and rest[1] is not None and np.asarray(rest[1]).size:
            scales = np.asarray(rest[1], dtype=np.float32)
        if len(rest) > 2 and rest[2] is not None and np.asarray(rest[2]).size:
            sizes = np.asarray(rest[2], dtype=np.int64)
    if a.get("axes") is not None:
        raise NotInteger("Resize with axes")
    if sizes is not None:
        out_shape = [int(s) for s in sizes]
        scales = [o / i for o, i in zip(out_shape, v.shape)]
    else:
        out_shape = [int(np.floor(i * s)) for i, s in zip(v.shape, scales)]
    mode = a.get("coordinate_transformation_mode", "half_pixel" if step.op == "Resize" else "asymmetric")
    if step.op == "Upsample":
        mode = "asymmetric"
    nearest = a.get("nearest_mode", "round_prefer_floor")
    return K.resize_nearest(v, out_shape, [float(s) for s in scales], mode, nearest)
