"""Graph helpers of the BatchNorm folding pass (:mod:`onnxsq.passes.fold_batchnorm`): constants seen
through Identity, lazily inferred tensor types, writing a layer's constant inputs without touching
tensors other nodes share, and fresh names."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import (
    UniqueNames,
    is_graph_output,
    new_constant,
    onnx_dtype_to_np,
    producer,
)
from ..graph import const_value as _graph_const

log = logging.getLogger(__name__)


class TensorTypes:
    """(rank, dtype) of tensors, from the graph or, computed once on demand, onnx shape inference."""

    def __init__(self, model: onnx.ModelProto | None) -> None:
        self.model = model  # None: no shape inference, unknown stays unknown
        self._types: dict[str, tuple[int | None, int]] | None = None

    def info(self, tensor: gs.Tensor) -> tuple[int | None, np.dtype | None]:
        rank = len(tensor.shape) if tensor.shape is not None else None
        dtype = _np_dtype(tensor.dtype)
        if (rank is None or dtype is None) and tensor.name:
            inferred_rank, elem = self._inferred().get(tensor.name, (None, 0))
            rank = inferred_rank if rank is None else rank
            dtype = dtype if dtype is not None or not elem else onnx_dtype_to_np(elem)
        return rank, dtype

    def _inferred(self) -> dict[str, tuple[int | None, int]]:
        if self._types is None:
            self._types = {}
            if self.model is None:
                return self._types
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception as exc:  # noqa: BLE001 - shape inference is a best-effort hint here
                log.debug("shape inference failed: %s", exc)
                return self._types
            g = inferred.graph
            for vi in list(g.value_info) + list(g.input) + list(g.output):
                tt = vi.type.tensor_type
                self._types[vi.name] = (len(tt.shape.dim) if tt.HasField("shape") else None, tt.elem_type)
        return self._types


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """A constant's value, also behind ``Identity`` nodes (the PyTorch exporter shares equal
    initializers, e.g. BN statistics, through Identity)."""
    seen = 0
    while not isinstance(tensor, gs.Constant) and seen < 16:
        node = producer(tensor)
        if node is None or node.op != "Identity" or not node.inputs:
            break
        tensor, seen = node.inputs[0], seen + 1
    return _graph_const(tensor)


def _np_dtype(dtype) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        try:
            return onnx_dtype_to_np(int(dtype))
        except Exception:  # noqa: BLE001
            return None


def set_const_input(graph: gs.Graph, node: gs.Node, idx: int, values: np.ndarray, base: str,
                    names: UniqueNames | None = None) -> None:
    """Give ``node`` input ``idx`` the value ``values``: in place when only ``node`` reads that
    initializer, else as a fresh constant (shared weights are cloned, Constant nodes replaced)."""
    cur = node.inputs[idx] if idx < len(node.inputs) else None
    if (isinstance(cur, gs.Constant) and cur.name and len(cur.outputs) == 1
            and not is_graph_output(graph, cur)):
        cur.values = values
        return
    new = new_constant(graph, f"{base}_folded" if cur is not None and cur.name else base, values, names)
    if cur is None:
        while len(node.inputs) < idx:  # unreachable for the layers here; keeps input positions right
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(new)
    else:
        node.inputs[idx] = new


