"""Hypothesis strategies for the tensors real models hold: 0-d, 1-element, empty and broadcastable
shapes, float16/float32/float64 and integer constants (found through pytest's ``pythonpath``)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOATS = (np.float16, np.float32, np.float64)

# Shapes seen in real exported graphs: scalars (paddle2onnx's Mul(scale)), [1], [C], [C,1,1],
# [1,C,1,1], empty tensors (Resize's roi) and ordinary weight shapes.
SHAPES = st.one_of(
    st.just(()), st.just((1,)), st.just((0,)), st.just((1, 1, 1, 1)),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
)
NONEMPTY_SHAPES = st.one_of(
    st.just(()), st.just((1,)), hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
)
FLOAT_DTYPES = st.sampled_from(FLOATS)


def float_arrays(shapes=SHAPES, dtypes=FLOAT_DTYPES, magnitude: float = 100.0):
    """Finite float arrays of any real-model shape and float dtype, ties and zeros included."""
    return st.tuples(dtypes, shapes).flatmap(lambda ds: hnp.arrays(
        ds[0], ds[1], elements=st.one_of(
            st.floats(-magnitude, magnitude, width=np.finfo(ds[0]).bits, allow_subnormal=False),
            st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.5, 2.5]))))


def int_arrays(shapes=SHAPES):
    """Integer constants (shape inputs, int64 indices stored as weights by some exporters)."""
    return st.tuples(st.sampled_from([np.int8, np.int32, np.int64]), shapes).flatmap(
        lambda ds: hnp.arrays(ds[0], ds[1], elements=st.integers(-100, 100)))


def as_input(arr: np.ndarray, scalar: bool):
    """A 0-d array as the numpy scalar an exporter's constant often becomes after indexing."""
    return arr[()] if scalar and arr.ndim == 0 else arr
