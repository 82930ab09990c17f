"""The graph helpers every pass shares: one home for reading constants, labels and attributes.

Passes edit graphs with onnx-graphsurgeon; :func:`export_like` turns the edited graph back into a
model that keeps the input's IR version, opset imports and metadata (gs would otherwise stamp the
installed onnx's newest IR version, which older runtimes refuse).

Contract of the readers: :func:`const_value` is *the* answer to "is this tensor a constant, and what
is it" for every pass (initializers, ``Constant`` outputs, both also behind ``Identity`` chains), so
that folding, thresholding and quantization agree on which layers have constant weights;
:func:`constant_tensors` is the same question on a ModelProto (no graph import); :func:`node_label`
names a node in reports the same way for a gs node and a NodeProto; :func:`attr` reads a NodeProto
attribute as a Python value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .model_io import copy_fields

log = logging.getLogger(__name__)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` as an onnx-graphsurgeon graph that does not keep ``model`` alive once its constants
    are loaded (gs keeps the opset list as a view into the proto, which pins all of its weights)."""
    graph = gs.import_onnx(model)
    if graph.import_domains is not None:
        graph.import_domains = [onnx.helper.make_opsetid(o.domain, o.version) for o in graph.import_domains]
    _own_attribute_tensors(graph)
    _keep_declared_io_shapes(graph, model.graph)
    return graph


def _keep_declared_io_shapes(graph: gs.Graph, declared: onnx.GraphProto) -> None:
    """Graph inputs/outputs keep the shapes the model declares: gs takes a tensor's shape from a
    shapeless value_info entry of the same name over the output's own, and then exports an output
    without a shape, which onnx.checker refuses."""
    for tensors, infos in ((graph.inputs, declared.input), (graph.outputs, declared.output)):
        by_name = {vi.name: vi for vi in infos}
        for t in tensors:
            vi = by_name.get(t.name)
            if t.shape is None and vi is not None and vi.type.tensor_type.HasField("shape"):
                t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in vi.type.tensor_type.shape.dim]


def _own_attribute_tensors(graph: gs.Graph) -> None:
    """Give tensor attributes (Constant's ``value``, ConstantOfShape's ``value``) their own arrays.

    gs keeps them as views of ``model``'s TensorProtos and, on export, writes the tensor's name into
    that proto: the caller's model would change (an unnamed attribute tensor gains ``name: ""``).
    They are small, so loading them costs nothing worth keeping the view for."""
    for node in graph.nodes:
        for key, value in node.attrs.items():
            if isinstance(value, gs.Constant) and not isinstance(value.values, np.ndarray):
                node.attrs[key] = gs.Constant(value.name, np.asarray(value.values))


def export_like(graph: gs.Graph, original: onnx.ModelProto, *, extra_opsets: dict[str, int] | None = None,
                min_ir_version: int = 0) -> onnx.ModelProto:
    """Export ``graph`` as a model with ``original``'s IR version, opsets and metadata.

    ``extra_opsets`` adds domains a pass introduced (e.g. com.microsoft); ``min_ir_version`` raises the
    IR version only when a pass truly needs it (the caller says so in its report).
    """
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    # Everything but the graph comes from ``original``: clear what gs stamped (IR version, opsets,
    # producer) and copy the rest over. Copying the exported graph into a new model instead would
    # hold the weights twice more for a moment.
    for fd, _ in model.ListFields():
        if fd.name != "graph":
            model.ClearField(fd.name)
    copy_fields(original, model, skip="graph")
    model.ir_version = max(original.ir_version, min_ir_version)
    _drop_shapeless_value_info(model.graph)
    if model.ir_version < 4:
        _list_initializers_as_inputs(model.graph)
    if extra_opsets:
        have = {o.domain: o for o in model.opset_import}
        for domain, version in extra_opsets.items():
            if domain in have:
                have[domain].version = max(have[domain].version, version)
            else:
                model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    return model


def _drop_shapeless_value_info(graph: onnx.GraphProto) -> None:
    """gs writes a value_info for every tensor of known type, with no ``shape`` field where the shape is
    unknown, which onnx.checker refuses; such an entry says nothing a runtime needs (it is a hint)."""
    keep = [vi for vi in graph.value_info
            if not vi.type.HasField("tensor_type") or vi.type.tensor_type.HasField("shape")]
    if len(keep) < len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep)


def _list_initializers_as_inputs(graph: onnx.GraphProto) -> None:
    """IR < 4 requires every initializer to be a graph input too (gs exports new weights as
    initializers only; onnx's converter and checker then call them undefined)."""
    listed = {i.name for i in graph.input}
    for init in graph.initializer:
        if init.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def copy_without_graph(original: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of every model field except the graph (copying the weights only to replace them is slow)."""
    model = onnx.ModelProto()
    copy_fields(original, model, skip="graph")
    return model


class UniqueNames:
    """Hands out names that collide with nothing already in a graph, nor with each other.

    ``UniqueNames(graph_or_model)`` takes every tensor and node name of an onnx-graphsurgeon graph or
    of a ModelProto's main graph (or any iterable of names); ``names(base)`` (or ``names.fresh(base)``)
    returns ``base``, else ``base_1``, ``base_2``, ... and reserves it.
    """

    def __init__(self, source: gs.Graph | onnx.ModelProto | Iterable[str] = ()) -> None:
        if isinstance(source, gs.Graph):
            taken = set(source.tensors().keys()) | {n.name for n in source.nodes if n.name}
        elif isinstance(source, onnx.ModelProto):
            g = source.graph
            taken = {i.name for i in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
            taken |= {n.name for n in g.node} | {x for n in g.node for x in (*n.input, *n.output)}
        else:
            taken = set(source)
        self.taken: set[str] = taken - {""}

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    __call__ = fresh

    def __contains__(self, name: str) -> bool:
        return name in self.taken


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs, not initializers (IR < 4 lists every weight as an input too)."""
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


MAX_IDENTITY_CHAIN = 16  # Identity nodes looked through before a tensor counts as computed


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor: an initializer or the output of a ``Constant`` node, also
    behind up to 16 ``Identity`` nodes (the PyTorch exporter shares equal initializers, e.g. BN
    statistics, through Identity); None for anything computed."""
    for _ in range(MAX_IDENTITY_CHAIN):
        node = producer(tensor) if not isinstance(tensor, gs.Constant) else None
        if node is None or node.op != "Identity" or not node.inputs:
            break
        tensor = node.inputs[0]
    return _own_value(tensor)


def _own_value(tensor: gs.Tensor) -> np.ndarray | None:
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


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Top-level constants of a ModelProto by name: initializers and ``Constant(value=...)`` outputs.

    The TensorProtos are the model's own (not copies): a pass working on its copy of the model may
    rewrite them in place.
    """
    out: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


def node_label(node: gs.Node | onnx.NodeProto) -> str:
    """A readable name for reports: the node name, or ``op(first output)`` when unnamed; the same for
    a graphsurgeon node and a NodeProto."""
    if node.name:
        return node.name
    if isinstance(node, onnx.NodeProto):
        return f"{node.op_type}({node.output[0] if node.output else '?'})"
    return f"{node.op}({node.outputs[0].name if node.outputs else '?'})"


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Attribute ``name`` of a NodeProto as a Python value (int, float, bytes, list, TensorProto...),
    else ``default``. (A graphsurgeon node has them in ``node.attrs``.)"""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def new_constant(graph: gs.Graph, base: str, values: np.ndarray, names: UniqueNames | None = None) -> gs.Constant:
    """A fresh constant whose name does not collide with any tensor in ``graph``.

    Passes that add many constants hand in one :class:`UniqueNames` of the graph (collecting the
    graph's names costs a walk over all of it, once per call otherwise).
    """
    names = names if names is not None else UniqueNames(graph.tensors().keys())
    return gs.Constant(names.fresh(base), np.require(values, requirements="C"))


def onnx_dtype_to_np(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def iter_weighted_nodes(graph: gs.Graph, ops: Iterable[str]) -> Iterable[tuple[gs.Node, gs.Tensor]]:
    """(node, weight tensor) for nodes of ``ops`` whose weight input (index 1) is constant."""
    ops = set(ops)
    for node in graph.nodes:
        if node.op in ops and len(node.inputs) > 1 and is_const(node.inputs[1]):
            yield node, node.inputs[1]
