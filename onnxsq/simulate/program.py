"""Reading an onnxsq power-of-two QDQ model into an integer *program*: constants, integer tensors and
an ordered list of layers.

A **layer** is what lies between DequantizeLinear outputs and one QuantizeLinear: its *steps* (the
ONNX nodes in between, e.g. ``Conv → Relu``), its inputs (integer tensors, read through their
DequantizeLinear, and constants) and its output integer tensor (the QuantizeLinear output: bits,
signedness, shift). A layer is ``int`` when every step has an integer kernel (:mod:`.execute`), else a
*float island*: its steps are computed in float between its DQ and Q, unless they are elementwise
functions of one integer tensor: then it is a ``lut`` layer, a look-up table of that tensor's codes
(:mod:`.lut`). The graph input's quantizer is
an ``input`` layer; a graph output computed in float after the last DQ is a ``tail`` layer (a ``scale``
layer where that is only a product by a constant: an aligned output's conversion to float, no island).

Every Q/DQ scale must be ``2**-shift`` and every zero point 0 — or 2**(n-1) on an n-bit unsigned
carrier, which holds a signed tensor's integers offset (``quantize --carrier uint8``): the program
reads them as the signed integers they are; anything else is refused with a one-line
:class:`~onnxsq.errors.UnsupportedModelError` naming the tensor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration.pow2 import shift_of
from ..errors import UnsupportedModelError
from ..model_io import default_opset
from .lut import lut_form

log = logging.getLogger(__name__)

QDQ = ("QuantizeLinear", "DequantizeLinear")
INT_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sum", "Sub", "Mul", "Relu", "Clip", "MaxPool",
    "AveragePool", "GlobalAveragePool", "ReduceMean", "GlobalMaxPool", "Resize", "Upsample", "Reshape", "Flatten",
    "Transpose", "Squeeze", "Unsqueeze", "Concat", "Identity", "Dropout", "Shape", "Slice", "Gather", "Split",
    "Expand", "ReduceSum", "ReduceMax", "ReduceMin", "Pad",
})
MOVES = frozenset({"Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather", "Split",
                   "Concat", "Shape"})  # ops that only rearrange elements
NP_INT = {np.dtype(np.int8): (8, True), np.dtype(np.uint8): (8, False), np.dtype(np.int16): (16, True),
          np.dtype(np.uint16): (16, False), np.dtype(np.int32): (32, True)}


@dataclass(frozen=True)
class QType:
    """An integer tensor's type: ``bits``, signedness, and its scale ``2**-shift``."""

    bits: int
    signed: bool
    shift: int
    zero: int = 0  # onnxruntime's codes are the integers + zero (a signed tensor on an unsigned carrier)

    def to_json(self) -> dict[str, Any]:
        return {"bits": self.bits, "signed": self.signed, "shift": self.shift}


@dataclass
class Const:
    """A constant: integer values with per-element ``shift`` (broadcastable; a DequantizeLinear of an
    integer initializer: weights, biases), or a plain array (``shift`` None: shapes, float bounds)."""

    values: np.ndarray
    shift: np.ndarray | None = None
    axis: int | None = None


@dataclass
class Step:
    """One ONNX node of a layer."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    name: str = ""


#: how a report names a layer of each kind (simulate's and export-int's)
KIND_ACTION = {"int": "integer", "lut": "look-up table", "float": "float island", "input": "input",
               "tail": "float tail", "scale": "output scale"}


@dataclass
class Layer:
    name: str
    kind: str  # int | lut | float | input | tail | scale (KIND_ACTION)
    op: str  # the main op (the first step with an integer-tensor input), or QuantizeLinear
    steps: list[Step]
    inputs: list[str]  # integer tensors read (through their DQ) and float graph inputs
    source: str  # the float tensor the output quantizer reads (the last step's output)
    output: str  # the integer tensor written (tail layers: the float graph output)
    out: QType | None
    reason: str = ""
    table: Any = None  # lut layers read from a package: their stored (half-even) :class:`~.lut.Table`


@dataclass
class Program:
    inputs: dict[str, tuple[np.dtype, tuple[int | None, ...]]]
    tensors: dict[str, QType]  # integer tensors (QuantizeLinear outputs)
    dq: dict[str, str]  # DequantizeLinear output -> the integer tensor it reads
    consts: dict[str, Const]
    layers: list[Layer]
    outputs: list[str]
    opset: int
    float_types: dict[str, int] = field(default_factory=dict)  # elem type of float tensors (islands)
    opsets: dict[str, int] = field(default_factory=dict)
    ir_version: int = 8

    @property
    def islands(self) -> list[Layer]:
        return [lay for lay in self.layers if lay.kind in ("float", "tail")]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedModelError(f"{node.name or node.op_type}: {node.op_type} with a subgraph is not simulated")
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        out[a.name] = value
    return out


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs; a zero Pad of an integer constant (quantize's stem_pad: a weight
    padded with zero input channels) folded."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if (node.op_type == "Pad" and len(node.input) == 2 and node.input[0] in out and node.input[1] in out
                and out[node.input[0]].dtype.kind in "iu" and _attrs(node).get("mode", "constant") == "constant"):
            v, pads = out[node.input[0]], [int(p) for p in out[node.input[1]].ravel()]
            if len(pads) == 2 * v.ndim and min(pads) >= 0:
                out[node.output[0]] = np.pad(v, list(zip(pads[:v.ndim], pads[v.ndim:])))
        if node.op_type == "Constant":
            attrs = _attrs(node)
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in attrs:
                    dtype = np.float32 if "float" in key else (np.int64 if "int" in key else None)
                    out[node.output[0]] = np.asarray(attrs[key], dtype=dtype)
    return out


OFFSET_TYPES = {np.dtype(np.uint8): np.dtype(np.int8), np.dtype(np.uint16): np.dtype(np.int16)}


def _scale_shift(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.dtype, int]:
    """The shift(s), integer type and zero point of a Q/DQ node (an unsigned carrier at zero point 2**(n-1):
    the signed type); refuses non-power-of-two scales, other nonzero zero points."""
    tensor = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
    if node.input[1] not in consts:
        raise UnsupportedModelError(f"{tensor}: {node.op_type} scale {node.input[1]!r} is not a constant")
    scale = consts[node.input[1]]
    try:
        shift = np.asarray(shift_of(scale), dtype=np.int64)
    except ValueError:
        raise UnsupportedModelError(f"{tensor}: {node.op_type} scale {scale.ravel()[:3].tolist()} is not a "
                                    "power of two (2**-shift); only onnxsq's power-of-two QDQ models "
                                    "simulate") from None
    dtype, zero = np.dtype(np.uint8), 0
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            raise UnsupportedModelError(f"{tensor}: {node.op_type} zero point is not a constant")
        zp = consts[node.input[2]]
        dtype = zp.dtype
        if np.any(zp != 0):
            if dtype not in OFFSET_TYPES or np.any(zp != 1 << (8 * dtype.itemsize - 1)):
                raise UnsupportedModelError(f"{tensor}: {node.op_type} zero point {zp.ravel()[:3].tolist()} is not 0 "
                                            "(nor 2**(n-1) on an n-bit unsigned carrier)")
            dtype, zero = OFFSET_TYPES[dtype], 1 << (8 * dtype.itemsize - 1)
    if node.op_type == "DequantizeLinear" and node.input[0] in consts and not zero:
        dtype = consts[node.input[0]].dtype
    if dtype not in NP_INT:
        raise UnsupportedModelError(f"{tensor}: integer type {dtype} is not simulated (int8/uint8/int16/uint16/int32)")
    return shift, dtype, zero


def _weight_const(values: np.ndarray, shift: np.ndarray, axis: int | None, name: str) -> Const:
    if shift.size == 1:
        return Const(values, shift.reshape(()), None)
    axis = axis if axis is not None else 1
    axis = axis % max(values.ndim, 1)
    if shift.size != values.shape[axis]:
        raise UnsupportedModelError(f"{name}: {shift.size} scales for axis {axis} of size {values.shape[axis]}")
    shape = [1] * values.ndim
    shape[axis] = shift.size
    return Const(values, shift.reshape(shape), axis)


def load_program(model: onnx.ModelProto) -> Program:
    """The integer program of a power-of-two QDQ model (see the module docstring)."""
    graph = model.graph
    raw = _constants(model)
    inits = {i.name for i in graph.initializer}
    inputs = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        inputs[vi.name] = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims)
    tensors: dict[str, QType] = {}
    dq: dict[str, str] = {}
    consts: dict[str, Const] = {k: Const(v) for k, v in raw.items()}
    quantizers = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            shift, dtype, zero = _scale_shift(node, raw)
            if shift.ndim and shift.size > 1:
                raise UnsupportedModelError(f"{node.output[0]}: per-axis activation scales are not simulated")
            bits, signed = NP_INT[dtype]
            tensors[node.output[0]] = QType(bits, signed, int(shift.ravel()[0]), zero)
            quantizers.append(node)
        elif node.op_type == "DequantizeLinear":
            shift, dtype, zero = _scale_shift(node, raw)
            src = node.input[0]
            if src in raw:
                axis = _attrs(node).get("axis", 1)
                values = (raw[src].astype(np.int32) - zero).astype(dtype) if zero else raw[src]
                consts[node.output[0]] = _weight_const(values, shift, axis, src)
            elif src in tensors:
                if shift.ndim and shift.size > 1 or int(shift.ravel()[0]) != tensors[src].shift:
                    raise UnsupportedModelError(f"{src}: DequantizeLinear scale differs from its QuantizeLinear's")
                dq[node.output[0]] = src
            else:
                raise UnsupportedModelError(f"{src}: DequantizeLinear of a tensor that no QuantizeLinear writes")
    if not quantizers:
        raise UnsupportedModelError("the model has no QuantizeLinear: not a quantized model (make one with "
                                    "onnxsq quantize)")
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    nodes = list(graph.node)
    layers = []
    for q in quantizers:
        layers.append(_layer(q.output[0], q.input[0], tensors[q.output[0]], nodes, producers, dq, consts, inputs))
    outputs = [o.name for o in graph.output]
    for name in outputs:
        if name not in dq and name not in tensors and name not in inputs and name not in consts:
            layers.append(_layer(name, name, None, nodes, producers, dq, consts, inputs))
    for lay in layers:
        if lay.kind == "float" and not lut_form(consts, dq, tensors, lay):
            lay.kind = "lut"
            bits = tensors[lay.inputs[0]].bits
            lay.reason = f"elementwise function of one {bits}-bit tensor: a look-up table of its {1 << bits} codes"
    order = {name: producers.get(name, -1) for name in (lay.output for lay in layers)}
    last = len(nodes)  # tails after every layer
    layers.sort(key=lambda lay: order[lay.output] + (last if lay.kind in ("tail", "scale") else 0))
    program = Program(inputs, tensors, dq, consts, layers, outputs, default_opset(model))
    program.float_types = _float_types(model)
    program.opsets = {o.domain: o.version for o in model.opset_import}
    program.ir_version = model.ir_version
    return program


def _layer(output: str, source: str, out: QType | None, nodes: list[onnx.NodeProto], producers: dict[str, int],
           dq: dict[str, str], consts: dict[str, Const], inputs: dict) -> Layer:
    """The steps between the leaves (DQ outputs, constants, graph inputs) and ``source``."""
    body: set[int] = set()
    leaves: list[str] = []
    stack = [source]
    while stack:
        t = stack.pop()
        if not t or t in dq or t in consts or t in inputs:
            if t in dq and dq[t] not in leaves:
                leaves.append(dq[t])
            elif t in inputs and t not in leaves:
                leaves.append(t)
            continue
        if t not in producers:
            raise UnsupportedModelError(f"{t}: no node writes it")
        i = producers[t]
        if nodes[i].op_type in QDQ:
            raise UnsupportedModelError(f"{t}: an integer tensor read without DequantizeLinear by a float op")
        if i not in body:
            body.add(i)
            stack.extend(nodes[i].input)
    steps = [Step(nodes[i].op_type, list(nodes[i].input), list(nodes[i].output), _attrs(nodes[i]),
                  nodes[i].domain, nodes[i].name) for i in sorted(body)]
    layer = Layer(output, "int", "QuantizeLinear", steps, leaves, source, output, out)
    classify(layer, dq, consts, inputs)
    return layer


def _by_constant(step: Step, consts: dict[str, Const]) -> bool:
    """A Mul by a scalar constant (how quantize hands back an aligned graph output: its float conversion)."""
    return step.op == "Mul" and len(step.inputs) == 2 and sum(
        1 for i in step.inputs if i in consts and np.size(consts[i].values) == 1) == 1


def classify(layer: Layer, dq: dict[str, str], consts: dict[str, Const], inputs: dict) -> None:
    """Set ``kind``, ``op`` and ``reason`` of ``layer`` from its steps (see the module docstring)."""
    if layer.out is None:
        layer.kind, layer.op = "tail", (layer.steps[-1].op if layer.steps else "Identity")
        layer.reason = "graph output computed in float after the last DequantizeLinear"
        if layer.steps and all(_by_constant(s, consts) for s in layer.steps):
            layer.kind, layer.reason = "scale", "graph output: the last DequantizeLinear times a constant"
        return
    read = {i for s in layer.steps if s.op != "Shape" for i in s.inputs}
    if any(i in inputs and (i in read or not layer.steps) for i in layer.inputs):
        # rearranging a float input, then quantizing it, is quantizing it: still the input's quantizer
        layer.kind = "input" if all(s.op in MOVES for s in layer.steps) else "float"
        layer.op = layer.steps[-1].op if layer.steps else "QuantizeLinear"
        layer.reason = "quantizes a float graph input"
        return
    fixed = set(dq) | {k for k, c in consts.items() if c.shift is not None}
    main = ""
    for step in layer.steps:
        if not any(i in fixed for i in step.inputs):
            continue
        main = main or step.op
        why = _not_integer(step, fixed, consts) if step.domain in ("", "ai.onnx") else \
            f"{step.domain}.{step.op} has no integer kernel: computed in float"
        if why:
            layer.kind, layer.op, layer.reason = "float", step.op, why
            return
        if step.op != "Shape":
            fixed.update(step.outputs)
    layer.op = main or (layer.steps[-1].op if layer.steps else "Identity")


def _not_integer(step: Step, fixed: set[str], consts: dict[str, Const]) -> str:
    """Why ``step`` has no integer kernel here ('' when it has)."""
    if step.op not in INT_OPS:
        return f"{step.op} has no integer kernel: computed in float"
    if step.op == "Gemm" and (step.attrs.get("alpha", 1.0) != 1.0 or step.attrs.get("beta", 1.0) != 1.0):
        return "Gemm with alpha/beta != 1: computed in float"
    if step.op in ("Add", "Sub", "Mul", "Sum") and not all(i in fixed for i in step.inputs):
        return f"{step.op} with a float operand: computed in float"
    if step.op in ("Resize", "Upsample") and step.attrs.get("mode", "nearest") != "nearest":
        return f"{step.op} mode {step.attrs.get('mode')!r}: computed in float"
    if step.op == "Pad" and (step.attrs.get("mode", "constant") != "constant" or step.attrs.get("value", 0) or any(
            i in fixed or i not in consts or np.any(consts[i].values != 0) for i in step.inputs[2:3] if i)):
        return "Pad other than with constant zeros: computed in float"
    if step.op == "MaxPool" and len([o for o in step.outputs if o]) > 1:
        return f"{step.op} with a second output: computed in float"
    if step.op == "Clip":
        bounds = [i for i in step.inputs[1:] if i]
        if any(b not in consts or consts[b].shift is not None for b in bounds):
            return "Clip with non-constant bounds: computed in float"
    return ""


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the graph's tensors (shape inference; what float islands declare)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    except Exception:  # noqa: BLE001 - types then default to float
        log.debug("shape inference failed; float island tensors are taken as float32")
        infos = list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
    return {vi.name: vi.type.tensor_type.elem_type for vi in infos if vi.type.tensor_type.elem_type}
