"""The numbers behind BatchNorm folding (numpy only, no graph): see :mod:`onnxsq.passes.fold_batchnorm`.

Everything is computed in float64 and cast back to the dtype of the tensor it replaces, so a folded
float32 model differs from the original only by float rounding.

An eval-mode BatchNormalization over channel axis 1 is the per-channel affine map
``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``.
"""

from __future__ import annotations

import numpy as np


def bn_affine(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
              eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) of ``BN(x) = s * x + t``, in float64."""
    g, b, m, v = (np.asarray(a, np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    s = g / np.sqrt(v + np.float64(eps))
    return s, b - m * s


def per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """The length-``channels`` vector a constant broadcasts to along axis 1 of a rank-``rank`` tensor.

    None when the constant varies along another axis or would grow the other operand's shape (then
    it is not a per-channel affine map and cannot be folded through).
    """
    if rank < 2:
        return None
    vec = channel_vector(value, rank, 1, channels)
    return None if isinstance(vec, str) else vec


def channel_vector(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | str:
    """The float64 length-``channels`` vector a constant broadcasts to along ``axis`` of a rank-``rank``
    tensor, or why it is not one.

    Numpy/ONNX broadcasting aligns shapes on the right, so a ``[C]`` constant runs along the *last*
    axis: on a Conv output ``[N, C, H, W]`` that is W, not C. A constant with more dimensions than the
    tensor would broadcast the tensor up, which no fold into a layer reproduces.
    """
    value = np.asarray(value)
    if value.ndim > rank:
        return (f"its constant of shape {list(value.shape)} has more dimensions than the rank-{rank} output "
                "(it would broadcast the output up)")
    axis = axis % rank
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return (f"its constant of shape {list(value.shape)} is not per-channel (the rank-{rank} output has "
                f"{channels} channels on axis {axis})")
    return np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (channels,)).copy()


def affine_step_error(op: str, c: np.ndarray, var_first: bool) -> str | None:
    """Why ``op`` with the constant ``c`` is not an affine map of its other operand, or None."""
    if op == "Div" and not var_first:
        return "c / x is not affine in x"
    if op == "Div" and np.any(np.asarray(c) == 0):
        return "divides by zero"
    return None


def compose_affine(a: np.ndarray, b: np.ndarray, op: str, c: np.ndarray,
                   var_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(a', b') with ``a * op(x, c) + b == a' * x + b'`` per channel (``op`` one of Add/Sub/Mul/Div;
    ``var_first``: x is the first operand). Walking a chain from its last node to its first composes it."""
    why = affine_step_error(op, c, var_first)
    if why:
        raise ValueError(f"{op}: {why}")
    if op == "Add":
        return a, b + a * c
    if op == "Sub":  # x - c, or c - x = -x + c
        return (a, b - a * c) if var_first else (-a, b + a * c)
    if op == "Mul":
        return a * c, b
    return a / c, b  # Div: x / c


def compose_chain(steps, rank: int, channels: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(a, b) per channel (axis 1) of a chain of constant elementwise ops, ``steps`` given from its *last* op
    to its first as ``(op, constant, var_first, label)``; or why a step is not a per-channel affine map."""
    a, b = np.ones(channels), np.zeros(channels)
    for op, c, var_first, label in steps:
        vec = channel_vector(c, rank, 1, channels)
        if isinstance(vec, str):
            return f"{op} {label}: {vec}"
        why = affine_step_error(op, vec, var_first)
        if why:
            return f"{op} {label}: {why}"
        a, b = compose_affine(a, b, op, vec, var_first)
    return a, b


def cast_like(values: np.ndarray, like: np.ndarray | np.dtype) -> np.ndarray:
    dtype = like.dtype if isinstance(like, np.ndarray) else np.dtype(like)
    # not np.ascontiguousarray: it turns a 0-d constant into shape [1], which changes broadcasting
    return np.require(np.asarray(values).astype(dtype, copy=False), requirements="C")


def _scaled(w: np.ndarray, factor: np.ndarray, dtype) -> np.ndarray:
    """``w * factor`` computed in float64 and rounded once to ``dtype`` (the same bits as
    ``(w.astype(float64) * factor).astype(dtype)``), without a float64 copy of the weights."""
    out = np.empty(np.broadcast_shapes(w.shape, factor.shape), dtype=dtype)
    np.multiply(w, factor, out=out, dtype=np.float64, casting="same_kind")
    return out


def convtranspose_out_channels(weight: np.ndarray, group: int) -> int:
    return weight.shape[1] * group


def scale_conv_weight(weight: np.ndarray, scale: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Conv weight [M, C/g, k...]: output channel o is row o whatever the group count."""
    w = np.asarray(weight)
    return _scaled(w, np.asarray(scale, np.float64).reshape((-1,) + (1,) * (w.ndim - 1)), dtype)


def scale_convtranspose_weight(weight: np.ndarray, scale: np.ndarray, group: int, dtype=np.float64) -> np.ndarray:
    """ConvTranspose weight [C, M/g, k...]: output channel ``g * M/g + j`` is column j of group g's rows."""
    w = np.asarray(weight)
    c_in, m_per_group = w.shape[0], w.shape[1]
    kernel = w.shape[2:]
    grouped = w.reshape((group, c_in // group, m_per_group) + kernel)
    factor = np.asarray(scale, np.float64).reshape((group, 1, m_per_group) + (1,) * len(kernel))
    return _scaled(grouped, factor, dtype).reshape(w.shape)


def scale_matrix_columns(weight: np.ndarray, scale: np.ndarray, transposed: bool, dtype=np.float64) -> np.ndarray:
    """Gemm/MatMul weight: output feature n is column n of B [K, N], or row n of B when transB=1."""
    w = np.asarray(weight)
    s = np.asarray(scale, np.float64)
    return _scaled(w, s.reshape(-1, 1) if transposed else s.reshape(1, -1), dtype)


def fold_bias(bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``scale * bias + shift`` (a missing bias is zero)."""
    b = np.zeros_like(scale) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    return scale * b + shift


def fold_gemm_c(c: np.ndarray | None, beta: float, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """New Gemm ``C`` (with beta = 1) for ``scale * (alpha A B + beta C) + shift`` along axis 1."""
    if c is None:
        return shift.copy()
    c64 = np.asarray(c, np.float64) * np.float64(beta)
    return c64 * scale + shift  # broadcasts against the last axis, as Gemm does for C


def input_channel_factors(weight: np.ndarray, group: int, vec: np.ndarray) -> np.ndarray:
    """Conv weight [M, C/g, k...]: per (o, i) the value of ``vec`` at input channel ``g(o) * C/g + i``."""
    m, c_per_group = weight.shape[0], weight.shape[1]
    return np.repeat(vec.reshape(group, c_per_group), m // group, axis=0)  # [M, C/g]


def fold_into_next_conv(weight: np.ndarray, bias: np.ndarray | None, group: int, s: np.ndarray,
                        t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conv(s * x + t) = Conv'(x): ``W'[o,i] = W[o,i] * s[c]``, ``b'[o] = b[o] + sum_{i,k} W[o,i,k] t[c]``.

    Exact only when every output sees a full window of real input (no padding) or ``t`` is zero.
    """
    w = np.asarray(weight, np.float64)
    extra = (1,) * (w.ndim - 2)
    s_w = input_channel_factors(w, group, s).reshape(w.shape[:2] + extra)
    t_w = input_channel_factors(w, group, t).reshape(w.shape[:2] + extra)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    new_bias = b + (w * t_w).reshape(w.shape[0], -1).sum(axis=1)
    return w * s_w, new_bias


def standalone_form(s: np.ndarray, t: np.ndarray, rank: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Broadcast constants ``[C, 1, ...]`` for ``x * s + t`` on a rank-``rank`` input; None where the
    factor is the identity (``s == 1`` or ``t == 0`` everywhere), so the cheapest exact form is used."""
    shape = (-1,) + (1,) * (rank - 2)
    mul = None if np.all(s == 1.0) else s.reshape(shape)
    add = None if np.all(t == 0.0) else t.reshape(shape)
    return mul, add
