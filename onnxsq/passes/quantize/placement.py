"""Where QuantizeLinear/DequantizeLinear pairs go: the placement rules, independent of calibration.

Rules (the original's Stage 7, in QDQ form; ``plan_qdq`` applies them to a graph):

- **Compute layers** ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``: the constant weight is
  quantized (symmetric, signed; per output channel with ``per_channel``: Conv axis 0, ConvTranspose
  axis 1 when group = 1, Gemm axis 0/1 by ``transB``, MatMul the last axis), the bias becomes int32
  at ``scale_in * scale_w``, the activation inputs are quantized, and so is the output — *after* a
  ``Relu``/``Clip`` that is its only consumer (the activation is fused: no quantization point
  between a layer and its activation). A ``MatMul`` (constant 2-D weight) whose only reader is an
  ``Add`` of a constant along its output channels (the last axis) has that constant as its bias:
  fold-batchnorm turns a 2-D MatMul + Add into a Gemm, but Gemm is 2-D, so on rank-3+ inputs the Add
  stays; no quantization point goes between the two, the Add is fused into the layer and the output
  is quantized after it (and after its activation).
- ``Add``: every input quantized (a constant input from its values), output (after a fused
  activation) with its own scale.
- ``Concat``: inputs and output share one scale, chosen to hold every input (``group``).
- Max pooling, ``Resize`` and shape ops (``SHARE``): quantized only when their input is; the outputs
  share the input's scale (same group), so they run on integers unchanged.
- Averaging ops (``AVERAGING``: ``AveragePool``, ``GlobalAveragePool``, ``ReduceMean``), quantized only
  when their input is, get their *own* scale, as every pooling output had in the original: an average
  is far narrower than its input (a global pool of a ReLU map: about half the range or less), so the
  input's step wastes bits; the integer kernel divides by the window anyway, and the new scale only
  changes that division's shift.
- A standalone ``Relu``/``Clip`` after a quantized tensor gets its own (usually unsigned) scale.
- Everything else stays float and reads dequantized values; every such node gets a reason.

Nodes whose name (or ``op:name``) matches an ``exclude`` pattern (fnmatch) stay float. Only float32
tensors are quantized. Biases shared by several layers are cloned (each layer needs its own
``scale_in * scale_w``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import const_value, is_const, is_graph_output, new_constant, node_label

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ADD = ("Add",)
CONCAT = ("Concat",)
ACTIVATIONS = ("Relu", "Clip")
AVERAGING = ("AveragePool", "GlobalAveragePool", "ReduceMean")
SHARE = (
    "MaxPool",
    "GlobalMaxPool",
    "ReduceMax",
    "ReduceMin",
    "Resize",
    "Upsample",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Slice",
    "Pad",
    "DepthToSpace",
    "SpaceToDepth",
    "Split",
    "Gather",
    "Tile",
    "Expand",
)
IGNORED = ("Constant", "Shape", "Size", "ConstantOfShape")  # no float data flows through them


@dataclass
class WeightUse:
    """One compute layer's constant operands."""

    node: str  # node label
    op: str
    weight: str  # tensor name
    axis: int | None  # per-channel axis (None: per-tensor)
    input: str  # the activation tensor whose scale the bias follows
    output: str  # the quantization point of the layer's output
    bias: str | None = None
    bias_axis: int | None = None
    notes: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)  # the node's attributes (group, strides, transA/transB)


@dataclass
class LayerEntry:
    node: str
    op: str
    action: str  # quantized | fused | shared | skipped
    reason: str = ""
    output: str | None = None  # quantization point this node produces


@dataclass
class Plan:
    activations: list[str] = field(default_factory=list)  # variable tensors that get Q → DQ
    constants: list[str] = field(default_factory=list)  # constant inputs of Add/Concat quantized from values
    groups: dict[str, str] = field(default_factory=dict)  # tensor → group root (shared scale)
    weights: list[WeightUse] = field(default_factory=list)
    layers: list[LayerEntry] = field(default_factory=list)

    def members(self, root: str) -> list[str]:
        return [t for t, r in self.groups.items() if r == root]

    def group_roots(self) -> list[str]:
        return list(dict.fromkeys(self.groups.values()))


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, a: str) -> None:
        self.parent.setdefault(a, a)

    def find(self, a: str) -> str:
        self.add(a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _is_float(t: gs.Tensor) -> bool:
    return t is not None and t.dtype is not None and np.dtype(t.dtype) == np.float32


def excluded(node: gs.Node, patterns: tuple[str, ...]) -> str | None:
    """The first pattern matching the node's name, label or ``op:name``."""
    keys = (node.name or "", node_label(node), f"{node.op}:{node.name or ''}")
    return next((p for p in patterns if any(fnmatch.fnmatchcase(k, p) for k in keys)), None)


def _weight_axis(node: gs.Node, w: np.ndarray, per_channel: bool) -> tuple[int | None, str | None]:
    """Per-channel axis of the weight of ``node``, or (None, why per-tensor)."""
    if not per_channel:
        return None, None
    if node.op == "Conv":
        return 0, None
    if node.op == "ConvTranspose":
        if int(node.attrs.get("group", 1)) != 1:
            return None, "per-tensor weight: ConvTranspose with group > 1 has no single output-channel axis"
        return 1, None
    if node.op == "Gemm":
        return (0 if int(node.attrs.get("transB", 0)) else 1), None
    if w.ndim < 2:
        return None, "per-tensor weight: a 1-D MatMul weight has no output-channel axis"
    return w.ndim - 1, None


def _fusable_activation(graph: gs.Graph, t: gs.Tensor, patterns: tuple[str, ...]) -> gs.Node | None:
    if is_graph_output(graph, t) or len(t.outputs) != 1:
        return None
    act = t.outputs[0]
    if act.op not in ACTIVATIONS or excluded(act, patterns) or len(act.outputs) != 1:
        return None
    if act.op == "Clip" and any(not is_const(i) for i in act.inputs[1:] if i is not None and i.name):
        return None
    return act


def _compute_reason(node: gs.Node) -> str | None:
    """Why a compute node cannot be quantized, or None."""
    data = [i for i in node.inputs[:2]]
    if len(data) < 2 or not all(_is_float(i) for i in data):
        return "inputs are not float32"
    if node.op in ("Conv", "ConvTranspose") and not is_const(node.inputs[1]):
        return "weight is not a constant"
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name and not is_const(node.inputs[2]):
        return "bias is not a constant"
    if len(node.outputs) != 1 or not _is_float(node.outputs[0]):
        return "output is not float32"
    return None


@dataclass
class _Walk:
    """What :func:`plan_qdq`'s two walks over the graph share."""

    plan: Plan = field(default_factory=Plan)
    groups: _Union = field(default_factory=lambda: _Union())
    demanded: dict[str, None] = field(default_factory=dict)  # activations quantized nodes read (ordered)
    const_demanded: dict[str, None] = field(default_factory=dict)  # constants they read
    quantized_nodes: dict[int, str] = field(default_factory=dict)  # id(node) → output quantization point
    fused: dict[int, str] = field(default_factory=dict)  # id(node) → the layer it is fused into

    def demand(self, t: gs.Tensor) -> None:
        (self.const_demanded if is_const(t) else self.demanded).setdefault(t.name, None)

    def entry(self, node: gs.Node, action: str, reason: str, tensor: str | None = None) -> None:
        self.plan.layers.append(LayerEntry(node_label(node), node.op, action, reason, tensor))

    def listed(self, node: gs.Node) -> bool:
        label = node_label(node)
        return any(e.node == label for e in self.plan.layers)


def plan_qdq(graph: gs.Graph, *, per_channel: bool = False, exclude: tuple[str, ...] = ()) -> Plan:
    """Decide the quantization points of ``graph`` (shape-inferred, so tensors carry dtypes).

    First walk: which nodes quantize (layers, Add, Concat) and what they read. Second walk, in
    topological order: the quantization points, the ops that share a scale or take their own, and why
    everything else stays float. Mutates ``graph`` only to clone biases shared between layers.
    """
    walk = _Walk()
    graph.toposort()
    for node in graph.nodes:
        _plan_node(graph, node, walk, per_channel, exclude)
    quantized: dict[str, None] = dict.fromkeys(walk.demanded)
    for node in graph.nodes:
        if node.op not in IGNORED and not excluded(node, exclude):
            _place_node(node, walk, quantized)
    for name in (*quantized, *walk.const_demanded):
        walk.groups.add(name)
    walk.plan.activations, walk.plan.constants = list(quantized), list(walk.const_demanded)
    walk.plan.groups = {t: walk.groups.find(t) for t in walk.groups.parent}
    return walk.plan


def _plan_node(graph: gs.Graph, node: gs.Node, walk: _Walk, per_channel: bool, exclude: tuple[str, ...]) -> None:
    """First walk: a layer, Add or Concat that quantizes, and the tensors it reads."""
    pat = excluded(node, exclude)
    if node.op in IGNORED or id(node) in walk.fused:  # fused: a MatMul's bias Add, planned with it
        return
    if pat and (node.op in COMPUTE + ADD + CONCAT + SHARE + AVERAGING + ACTIVATIONS):
        walk.entry(node, "skipped", f"excluded by --exclude {pat!r}")
        return
    if node.op in COMPUTE:
        why = _compute_reason(node)
        if why:
            walk.entry(node, "skipped", f"stays float: {why}")
            return
        _plan_compute(graph, node, walk.plan, walk.demand, per_channel, exclude, walk.quantized_nodes, walk.fused)
    elif node.op in ADD + CONCAT:
        if not all(_is_float(i) for i in node.inputs) or not _is_float(node.outputs[0]):
            walk.entry(node, "skipped", "stays float: not float32")
            return
        for i in node.inputs:
            walk.demand(i)
        out = node.outputs[0]
        act = _fusable_activation(graph, out, exclude) if node.op in ADD else None
        if act is not None:
            walk.fused[id(act)] = node_label(node)
            out = act.outputs[0]
        walk.quantized_nodes[id(node)] = out.name
        if node.op in CONCAT:
            for i in node.inputs:
                walk.groups.union(out.name, i.name)


def _place_node(node: gs.Node, walk: _Walk, quantized: dict[str, None]) -> None:
    """Second walk: the node's quantization point, its shared or own scale, or why it stays float."""
    if id(node) in walk.quantized_nodes:
        qp = walk.quantized_nodes[id(node)]
        quantized.setdefault(qp, None)
        walk.groups.add(qp)
        if not walk.listed(node):
            walk.entry(node, "quantized", "", qp)
    elif id(node) in walk.fused:
        walk.entry(node, "fused", f"fused into {walk.fused[id(node)]}")
    elif node.op in SHARE + AVERAGING + ACTIVATIONS and node.inputs and node.inputs[0].name in quantized \
            and all(_is_float(o) for o in node.outputs):
        if node.op == "Pad" and not _pad_keeps_zero(node):
            walk.entry(node, "skipped", "stays float: pads with a non-zero value")
            return
        for o in node.outputs:
            quantized.setdefault(o.name, None)
            if node.op in SHARE:
                walk.groups.union(node.inputs[0].name, o.name)
            else:
                walk.groups.add(o.name)
        how = "shares its input's scale" if node.op in SHARE else \
            "own scale (an average is narrower than its input)" if node.op in AVERAGING else \
            "own scale (standalone activation)"
        walk.entry(node, "shared" if node.op in SHARE else "quantized", how, node.outputs[0].name)
    elif not walk.listed(node):
        floats = [i for i in node.inputs if _is_float(i) and not is_const(i)]
        if node.op in SHARE + AVERAGING + ACTIVATIONS:
            why = "its input is not quantized"
        elif not floats:
            return  # integer / shape computation: nothing to quantize
        else:
            why = f"no integer kernel for {node.op} in the QDQ scheme"
        walk.entry(node, "skipped", f"stays float: {why}")


def _pad_keeps_zero(node: gs.Node) -> bool:
    if node.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return True
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
        v = const_value(node.inputs[2])
        return v is not None and bool(np.all(v == 0))
    return float(node.attrs.get("value", 0.0)) == 0.0


def _plan_compute(graph: gs.Graph, node: gs.Node, plan: Plan, demand, per_channel: bool,
                  exclude: tuple[str, ...], quantized_nodes: dict[int, str], fused: dict[int, str]) -> None:
    label = node_label(node)
    x, w = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    bias_add = _bias_add(graph, node, exclude) if node.op == "MatMul" else None
    if bias_add is not None:
        fused[id(bias_add)] = label
        out = bias_add.outputs[0]
    act = _fusable_activation(graph, out, exclude)
    if act is not None:
        fused[id(act)] = label
        out = act.outputs[0]
    quantized_nodes[id(node)] = out.name
    demand(x)  # a constant left operand (MatMul(W, x)) is quantized from its values
    if not is_const(w):  # MatMul/Gemm of two activations
        demand(w)
        return
    wv = const_value(w)
    axis, note = _weight_axis(node, wv, per_channel)
    use = WeightUse(label, node.op, w.name, axis, x.name, out.name, attrs=dict(node.attrs))
    if note:
        use.notes.append(note)
    if bias_add is None:
        owner, idx = node, 2
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name else None
    else:
        owner, idx = bias_add, 0 if bias_add.inputs[1] is node.outputs[0] else 1
        bias = _bias_add_constant(graph, bias_add, idx, wv.shape[-1])
    if bias is not None:
        _plan_bias(graph, node, use, wv, bias, owner, idx)
    plan.weights.append(use)


def _plan_bias(graph: gs.Graph, node: gs.Node, use: WeightUse, wv: np.ndarray, bias: gs.Tensor, owner: gs.Node,
               idx: int) -> None:
    """Make ``bias`` (input ``idx`` of ``owner``: the layer, or a MatMul's bias Add) ``use``'s int32 bias,
    or note why it stays float. Shared biases are cloned; a scalar one becomes per channel when needed."""
    axis = use.axis
    why = None
    if node.op == "Gemm" and (float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0):
        why = "bias kept float: Gemm alpha/beta != 1"
    bv = const_value(bias)
    if why is None and axis is not None and bv.ndim and bv.shape[-1] != wv.shape[axis]:
        why = "bias kept float: its shape does not follow the weight's channels"
    if why:
        use.notes.append(why)
    else:
        if len(bias.outputs) > 1 or is_graph_output(graph, bias):
            clone = new_constant(graph, f"{bias.name}_{node.name or 'layer'}", bv.astype(np.float32))
            owner.inputs[idx] = clone
            bias = clone
        use.bias = bias.name
        if axis is not None:
            if bv.ndim == 0:
                clone = new_constant(graph, f"{bias.name}_per_channel", np.full(wv.shape[axis], bv, np.float32))
                owner.inputs[idx] = clone
                bias, bv = clone, np.asarray(clone.values)
                use.bias = bias.name
            use.bias_axis = bv.ndim - 1


def _bias_add(graph: gs.Graph, node: gs.Node, patterns: tuple[str, ...]) -> gs.Node | None:
    """The ``Add`` that is the bias of a MatMul with a constant 2-D weight: the MatMul output's only
    reader, adding a float32 constant that varies along the last axis only and does not raise the
    output's rank (known from the input's shape); None otherwise."""
    w, out = const_value(node.inputs[1]), node.outputs[0]
    x_shape = node.inputs[0].shape
    if w is None or w.ndim != 2 or x_shape is None or len(x_shape) < 2 or is_graph_output(graph, out) \
            or len(out.outputs) != 1:
        return None
    add = out.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2 or excluded(add, patterns) or len(add.outputs) != 1 \
            or not _is_float(add.outputs[0]):
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    c = const_value(other) if other is not out else None
    if c is None or c.dtype != np.float32 or c.ndim > len(x_shape):
        return None
    if any(d != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, w.shape[1])):
        return None
    return add


def _bias_add_constant(graph: gs.Graph, add: gs.Node, idx: int, channels: int) -> gs.Tensor:
    """The bias Add's constant as an initializer with one value per output channel on its last axis
    (a 1-element or Constant-node constant is replaced by one; the Add computes the same)."""
    t = add.inputs[idx]
    c = np.asarray(const_value(t))
    if isinstance(t, gs.Constant) and c.ndim and c.shape[-1] == channels:
        return t
    full = np.broadcast_to(c, (c.shape[:-1] if c.ndim else ()) + (channels,)).astype(np.float32)
    clone = new_constant(graph, f"{t.name}_bias", full)
    add.inputs[idx] = clone
    return clone
