"""Bias correction: fold the mean output error of a layer's quantized weights into its int32 bias.

Math: a layer computes ``y = W x + b``. With quantized weights ``W^ = W + dW`` its output gains
``dW x``, whose mean over the data is ``dW E[x]``: with the input's per-channel means ``mu`` (measured
on the calibration data in the calibration pass), the mean error per output channel ``o`` is

- ``Conv`` (weight ``O × C/g × k…``): ``e[o] = sum_{i,k} dW[o,i,k] mu[c(o,i)]`` with
  ``c(o,i) = (o // (O/g)) * (C/g) + i``; exact wherever the window sees no zero padding;
- ``ConvTranspose`` (weight ``C × O/g × k…``): every output pixel receives on average
  ``prod(kernel) / prod(strides)`` taps, so ``e[g O/g + j] = sum_{i in group g} mu[i] sum_k dW[i,j,k]
  / prod(strides)`` (the interior average);
- ``Gemm`` (``transA = 0``): ``e = mu dB`` (``dB dW`` rows when ``transB = 1``: ``e = dB mu``);
- ``MatMul`` with a constant ``K × M`` weight and a bias ``Add`` (:mod:`.placement`): ``e = mu dW``
  with ``mu`` the input's means over its last axis (every other axis averaged).

The bias becomes ``b - e`` before it is quantized to int32 at ``scale_in * scale_w``, so the
quantized layer's output mean matches float (Nagel et al., 2019, "Data-Free Quantization", the
empirical variant). No cost on the target: it is the same int32 bias, at the same shift.

Why it matters: rounding errors of the weights are not zero-mean per output channel, and inputs after
ReLU have large means, so ``dW E[x]`` is a constant offset on every pixel of the channel and it adds
up through the network (what it gains: the README's fidelity tables).

Not corrected, with the reason in the report: weights whose parameters were given (QAT trained the
bias with them), layers whose bias stays float or that have none (a MatMul without a bias Add; a
bias-free Conv), ``Gemm`` with ``transA = 1``, inputs of unknown rank (no axis to average over), an
input whose mean another layer takes over another axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...calibration import pow2
from ...calibration.stats import ChannelMean
from ...params import TensorQuant
from .placement_plan import WeightUse


def mean_axis(use: WeightUse, rank: int | None) -> tuple[int | None, str | None]:
    """The input axis whose per-channel mean the correction needs, or ``(None, why not)``."""
    if use.bias is None:
        why = "it has no bias input" if use.op in ("MatMul", "Conv", "ConvTranspose", "Gemm") else "no bias"
        return None, f"no bias correction: {why}"
    if use.op == "Gemm" and int(use.attrs.get("transA", 0)):
        return None, "no bias correction: Gemm with transA"
    if rank is None or rank < 2:
        return None, "no bias correction: the input's rank is unknown"
    return (rank - 1 if use.op == "MatMul" else 1), None


def weight_error(w: np.ndarray, p: TensorQuant, q: np.ndarray | None = None) -> np.ndarray:
    """``dW``: what the DequantizeLinear of ``w`` yields minus ``w``, exactly, in ``w``'s float type.

    Exact in float32 for the reason :func:`onnxsq.calibration.pow2.weight_shift` gives (scaling by a
    power of two is exact, and so is the difference of a weight and its rounding); one buffer, in place.
    ``q``: ``w``'s integers if already computed (the same values this would round to).
    """
    work = np.float32 if w.dtype in (np.float16, np.float32) else np.float64
    x = np.asarray(w, dtype=work)
    axis = p.axis % w.ndim if p.per_channel and p.axis is not None else None
    shift = p.shift_array
    buf = (q.astype(work) if q is not None and q.shape == x.shape
           else pow2.quantize(x, shift, p.bits, True, symmetric=True, axis=axis, dtype=work))
    np.multiply(buf, pow2.power_of_two(-shift, work, x.ndim, axis), out=buf)
    np.subtract(buf, x, out=buf)
    return buf


def output_error(use: WeightUse, w: np.ndarray, p: TensorQuant, mu: np.ndarray,
                 q: np.ndarray | None = None) -> np.ndarray:
    """``E[dW x]`` per output channel (float64) for input channel means ``mu``."""
    dw = weight_error(w, p, q)
    mu = np.asarray(mu, np.float64)
    group = int(use.attrs.get("group", 1))
    if use.op == "Conv":
        out_c, per_group = dw.shape[0], dw.shape[1]
        per_tap = dw.reshape(out_c, per_group, -1)
        # O × C/g; a 1x1 kernel needs no sum (numpy reduces a length-1 axis element by element, slowly)
        taps = per_tap[:, :, 0].astype(np.float64) if per_tap.shape[2] == 1 else per_tap.sum(axis=2, dtype=np.float64)
        # output channel o of group g reads input channels g*C/g .. (g+1)*C/g - 1
        return np.einsum("goc,gc->go", taps.reshape(group, out_c // group, per_group),
                         mu.reshape(group, per_group)).reshape(out_c)
    if use.op == "ConvTranspose":
        in_c, out_g = dw.shape[0], dw.shape[1]
        strides = use.attrs.get("strides") or [1] * (dw.ndim - 2)
        taps = dw.reshape(in_c, out_g, -1).sum(axis=2, dtype=np.float64) / float(np.prod(strides))  # C × O/g
        in_g = in_c // group
        return np.concatenate([mu[g * in_g:(g + 1) * in_g] @ taps[g * in_g:(g + 1) * in_g] for g in range(group)])
    if use.op == "Gemm":
        dw = dw.astype(np.float64)
        return dw @ mu if int(use.attrs.get("transB", 0)) else mu @ dw
    if use.op == "MatMul" and dw.ndim == 2:
        return mu @ dw.astype(np.float64)
    raise ValueError(f"no bias correction for {use.op}")


def means_wanted(weights: Iterable[Any], given: Mapping[str, TensorQuant], graph: gs.Graph,
                 have_data: bool) -> dict[str, ChannelMean]:
    """Per-channel means to observe for bias correction (layers whose weight is quantized here)."""
    tensors = graph.tensors()
    means: dict[str, ChannelMean] = {}
    for use in weights:
        if use.weight in given:
            continue  # given parameters (QAT) come with a bias trained for them
        t = tensors.get(use.input)
        rank = len(t.shape) if t is not None and t.shape is not None else None
        axis, why = mean_axis(use, rank)
        if why is None and not have_data:
            why = "no bias correction: no calibration data"
        if why is None and use.input in means and means[use.input].axis != axis:
            why = f"no bias correction: another layer takes its input's mean over axis {means[use.input].axis}"
        if why is not None:
            use.notes.append(why)
        elif use.input not in means:
            means[use.input] = ChannelMean(axis, rank)
    return means


def correct_bias(use: Any, wp: TensorQuant, consts: dict[str, np.ndarray], given: Mapping[str, TensorQuant],
                 means: Mapping[str, ChannelMean], q: np.ndarray | None = None,
                 skip: np.ndarray | None = None) -> list[float] | None:
    """Replace ``use.bias``'s values in ``consts`` by the corrected ones (none for the output channels
    ``skip`` marks); a given bias brings its correction along (a parameters file reproduces the model).
    Returns it."""
    b = consts[use.bias]
    if use.bias in given:
        corr = given[use.bias].correction
        if corr is None:
            return None
        e = np.asarray(corr, np.float64)
    else:
        m = means.get(use.input)
        if m is not None and mean_axis(use, m.rank)[0] != m.axis:
            m = None  # taken over another layer's axis (means_wanted noted it)
        mu = m.mean if m is not None and use.weight not in given else None
        if mu is None:
            return None
        try:
            e = output_error(use, consts[use.weight], wp, mu, q)
        except (ValueError, IndexError) as exc:  # channel counts that do not line up: leave the bias alone
            use.notes.append(f"no bias correction: {exc}")
            return None
        if skip is not None and skip.size == np.size(e):
            e = np.where(skip.reshape(np.shape(e)), 0.0, e)
    b64 = np.asarray(b, np.float64)
    try:
        fixed = ((b64.reshape(()) if b64.size == 1 else b64) - e).astype(np.float32)
    except ValueError:
        use.notes.append(f"no bias correction: {e.size} corrections do not fit bias shape {list(b.shape)}")
        return None
    consts[use.bias] = fixed
    return e.tolist()
