"""Small helpers over onnx-graphsurgeon shared by the passes.

Passes edit graphs with onnx-graphsurgeon; :func:`export_like` turns the edited graph back into a
model that keeps the input's IR version, opset imports and metadata (gs would otherwise stamp the
installed onnx's newest IR version, which older runtimes refuse).
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def export_like(graph: gs.Graph, original: onnx.ModelProto, *, extra_opsets: dict[str, int] | None = None,
                min_ir_version: int = 0) -> onnx.ModelProto:
    """Export ``graph`` as a model with ``original``'s IR version, opsets and metadata.

    ``extra_opsets`` adds domains a pass introduced (e.g. com.microsoft); ``min_ir_version`` raises the
    IR version only when a pass truly needs it (the caller says so in its report).
    """
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    exported = gs.export_onnx(graph, do_type_check=False)
    model = copy_without_graph(original)
    model.graph.CopyFrom(exported.graph)
    model.ir_version = max(original.ir_version, min_ir_version)
    if extra_opsets:
        have = {o.domain: o for o in model.opset_import}
        for domain, version in extra_opsets.items():
            if domain in have:
                have[domain].version = max(have[domain].version, version)
            else:
                model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    return model


def copy_without_graph(original: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of every model field except the graph (copying the weights only to replace them is slow)."""
    model = onnx.ModelProto()
    for fd, value in original.ListFields():
        if fd.name == "graph":
            continue
        if isinstance(value, (list, tuple)) or hasattr(value, "extend"):
            getattr(model, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(model, fd.name).CopyFrom(value)
        else:
            setattr(model, fd.name, value)
    return model


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor: an initializer or the output of a ``Constant`` node."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        node = tensor.inputs[0]
        attrs = node.attrs
        if "value" in attrs:
            val = attrs["value"]
            return np.asarray(val.values if isinstance(val, gs.Constant) else val)
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(list(attrs[key]), dtype=dtype)
    return None


def is_const(tensor: gs.Tensor | None) -> bool:
    return tensor is not None and const_value(tensor) is not None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def sole_consumer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The only node reading ``tensor``, or None when it has several readers or is a graph output."""
    if is_graph_output(graph, tensor) or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def node_label(node: gs.Node) -> str:
    """A readable name for reports: the node name, or op + first output when unnamed."""
    if node.name:
        return node.name
    return f"{node.op}({node.outputs[0].name if node.outputs else '?'})"


def new_constant(graph: gs.Graph, base: str, values: np.ndarray) -> gs.Constant:
    """A fresh constant whose name does not collide with any tensor in ``graph``."""
    taken = graph.tensors().keys()
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return gs.Constant(name, np.ascontiguousarray(values))


def onnx_dtype_to_np(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def iter_weighted_nodes(graph: gs.Graph, ops: Iterable[str]) -> Iterable[tuple[gs.Node, gs.Tensor]]:
    """(node, weight tensor) for nodes of ``ops`` whose weight input (index 1) is constant."""
    ops = set(ops)
    for node in graph.nodes:
        if node.op in ops and len(node.inputs) > 1 and is_const(node.inputs[1]):
            yield node, node.inputs[1]
