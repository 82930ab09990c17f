"""Histograms of large activations from a strided subsample, taken inside the model.

Binning every value is most of what histogram calibration costs beyond the forward pass itself
(ResNet-50-sized: 17 M values per sample, ~55 ms of numpy against a ~100 ms forward; binning every
5th costs ~12 ms). The range
estimators read the histogram as a distribution, so a large tensor is binned from every ``p``-th
value of its flattened batch (``p`` a prime from :data:`STRIDES` that divides none of its dimensions:
successive rows and channels start at rotating offsets, so no column or channel is systematically
left out) while its count, min and max stay exact (``ReduceMin``/``ReduceMax``/``Size`` in the graph):
the histogram's range, the min/max-fitting shift and the ``minmax`` estimator are those of all the
values. Tensors with fewer than ``MIN_BINNED * p`` values per sample, or of unknown shape, are binned
whole.

The subsample is a function of each batch alone (``Reshape`` to 1-D, ``Slice`` with a step), so shards
that form the one-pass batches still merge to the one-pass statistics bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (5, 3)  # primes, the largest that fits first (13 and 11 cost fastmrz_mrz_seg 0.8 dB: bench/calib_fidelity.py)
MIN_BINNED = 16384  # values per sample binned at least, whatever the stride


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every typed tensor's dimensions (None where symbolic or unknown), after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)  # a skeleton: small
    g = inferred.graph
    out: dict[str, list[int | None]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def stride_for(dims: list[int | None] | None) -> int:
    """The subsampling step for a tensor of ``dims`` (the first one the batch): 1 for whole."""
    if not dims or any(d is None or d <= 0 for d in dims[1:]):
        return 1
    per_sample = math.prod(dims[1:])  # (1 for a 1-D tensor)
    for p in STRIDES:
        if per_sample >= MIN_BINNED * p and all(d % p for d in dims if d):
            return p
    return 1


def sample_strides(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, int]:
    """``{name: stride}`` for ``names`` in ``model`` (stride 1: binned whole). Needs opset >= 10
    (``Slice`` with steps); below it every tensor is binned whole."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < 10:
        return {n: 1 for n in names}
    shapes = static_shapes(model)
    return {n: stride_for(shapes.get(n)) for n in names}


def add_sample_nodes(model: onnx.ModelProto, strides: Mapping[str, int], prefix: str = "onnxsq_sample"
                     ) -> dict[str, list[onnx.NodeProto]]:
    """Append (in place) every ``stride``-th value of each tensor, flattened, as a graph output; returns
    ``{name: [Reshape, Slice] nodes}`` for the caller to place behind the tensor's producer."""
    g = model.graph
    flat, start, end, axis = (f"{prefix}_{k}" for k in ("flat", "start", "end", "axis"))
    for name, value in ((flat, [-1]), (start, [0]), (end, [2**62]), (axis, [0])):
        g.initializer.append(numpy_helper.from_array(np.array(value, "int64"), name))
    after: dict[str, list[onnx.NodeProto]] = {}
    for i, (t, s) in enumerate(strides.items()):
        base = f"{prefix}_{i}"
        step = f"{base}_step"
        g.initializer.append(numpy_helper.from_array(np.array([s], "int64"), step))
        after[t] = [helper.make_node("Reshape", [t, flat], [f"{base}_flat"], name=f"{base}_Reshape"),
                    helper.make_node("Slice", [f"{base}_flat", start, end, axis, step], [f"{base}_values"],
                                     name=f"{base}_Slice")]
        g.output.append(helper.make_tensor_value_info(f"{base}_values", TensorProto.FLOAT, None))
    return after


def sample_output(i: int, prefix: str = "onnxsq_sample") -> str:
    """The graph output :func:`add_sample_nodes` names for its ``i``-th tensor."""
    return f"{prefix}_{i}_values"
