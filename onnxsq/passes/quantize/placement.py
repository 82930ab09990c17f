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
  is quantized after it (and after its activation). With ``fuse`` (``--fuse-activations``) also a
  LeakyRelu/PRelu, or SiLU, HardSwish, Sigmoid, ... that is the layer's only reader fuses into it
  (:mod:`.placement_fuse`: the target applies it to the accumulator).
- ``Add``: every input quantized (a constant input from its values), output (after a fused
  activation) with its own scale.
- ``Concat``: inputs and output share one scale, chosen to hold every input (``group``).
- An ``Add`` or ``Concat`` in the *float tail* (after the last compute layer, before a float op or a
  Concat) or inside a *float island* (every variable input made by a float op) stays float, its inputs at
  their own scales (:mod:`.placement_tail`: why, and what stays integer).
- Max pooling, ``Resize`` and shape ops (``SHARE``): quantized only when their input is; the outputs
  share the input's scale (same group), so they run on integers unchanged.
- Averaging ops (``AVERAGING``: ``AveragePool``, ``GlobalAveragePool``, ``ReduceMean``), quantized only
  when their input is, get their *own* scale, as every pooling output had in the original: an average
  is far narrower than its input (a global pool of a ReLU map: about half the range or less), so the
  input's step wastes bits; the integer kernel divides by the window anyway, and the new scale only
  changes that division's shift.
- A standalone ``Relu``/``Clip`` after a quantized tensor gets its own (usually unsigned) scale.
- ``ort_kernels``: ``Sigmoid``/``LeakyRelu`` (``UNARY``) after a quantized tensor get their own scale
  (QLinearSigmoid/LeakyRelu; tables in :mod:`onnxsq.simulate`) unless they write a graph output (or
  one through moves), a ``Mul`` of two activations is an integer product (QLinearMul): SiLU and
  squeeze-excitation gates run on integers.
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

from ...graph import const_value, is_const, is_graph_output, node_label
from .placement_bias import bias_add, bias_add_constant, plan_bias
from .placement_forms import bounded_outputs, pad_keeps_zero, rewrite_forms
from .placement_fuse import fused_function
from .placement_plan import LayerEntry, Plan, WeightUse
from .placement_tail import FLOAT_ISLAND, FLOAT_TAIL, float_made, float_tail, in_island

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ADD = ("Add",)
CONCAT = ("Concat",)
ACTIVATIONS = ("Relu", "Clip")
UNARY = ("Sigmoid", "LeakyRelu")  # onnxruntime fuses DQ → op → Q into QLinearSigmoid / QLinearLeakyRelu
AVERAGING = ("AveragePool", "GlobalAveragePool", "ReduceMean")
SHARE = (
    "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Resize", "Upsample", "Reshape", "Flatten",
    "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Pad", "DepthToSpace", "SpaceToDepth", "Split",
    "Gather", "Tile", "Expand",
)
IGNORED = ("Constant", "Shape", "Size", "ConstantOfShape")  # no float data flows through them


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
    products: bool = False  # integer-only: Mul of two activations quantizes like Add
    unary: tuple[str, ...] = ()  # ops that get their own scale after a quantized tensor (UNARY with ort_kernels)
    outputs: set[str] = field(default_factory=set)  # graph outputs, or moved into one: a UNARY op there stays float
    tail: set[str] = field(default_factory=set)  # outputs of joins in the float tail (float_tail)
    made: set[str] = field(default_factory=set)  # tensors float ops make (float_made)
    tables: dict[int, tuple[str, list[str]]] = field(default_factory=dict)  # id(node) → (root, outputs)
    functions: dict[int, list[gs.Node]] = field(default_factory=dict)  # id(layer) → its fused activation

    def demand(self, t: gs.Tensor) -> None:
        (self.const_demanded if is_const(t) else self.demanded).setdefault(t.name, None)

    def entry(self, node: gs.Node, action: str, reason: str, tensor: str | None = None) -> None:
        self.plan.layers.append(LayerEntry(node_label(node), node.op, action, reason, tensor))

    def listed(self, node: gs.Node) -> bool:
        label = node_label(node)
        return any(e.node == label for e in self.plan.layers)


def plan_qdq(graph: gs.Graph, *, per_channel: bool = False, exclude: tuple[str, ...] = (),
             integer_only: bool = False, ort_kernels: bool = False, fuse: str = "none") -> Plan:
    """Decide the quantization points of ``graph`` (shape-inferred, so tensors carry dtypes).

    First walk: which nodes quantize (layers, Add, Concat) and what they read. Second walk, in
    topological order: the quantization points, the ops that share a scale or take their own, and why
    everything else stays float. Mutates ``graph`` only to clone biases shared between layers.
    ``integer_only``: no float island where an integer form exists (:mod:`.placement_integer`);
    ``ort_kernels``: Sigmoid, LeakyRelu and products quantized as onnxruntime's kernels run them. First
    the exact rewrites into onnxruntime's integer forms (:mod:`.placement_forms`: Sum as Add, a channel
    shuffle as a Gather). ``fuse``: activations fused into their layers (:mod:`.placement_fuse`; not with
    ``integer_only``, whose look-up tables read the layer's 8-bit output).
    """
    rewrite_forms(graph)
    if integer_only:
        from .placement_integer import plan_integer_only

        return plan_integer_only(graph, per_channel=per_channel, exclude=exclude, ort_kernels=ort_kernels)
    return plan_walks(graph, per_channel, exclude, products=ort_kernels, unary=UNARY if ort_kernels else (),
                      fuse=fuse)


def plan_walks(graph: gs.Graph, per_channel: bool, exclude: tuple[str, ...], products: bool = False,
               tables: dict[int, tuple[str, list[str]]] | None = None, unary: tuple[str, ...] = (),
               fuse: str = "none") -> Plan:
    """:func:`plan_qdq`'s two walks; ``products``: a Mul of two activations quantizes like an Add;
    ``tables``: nodes that are look-up tables of one quantized root (id → root, the outputs that get
    their own quantization point); ``unary``: ops that get their own scale after a quantized tensor;
    ``fuse``: which activations fuse into their layer (:mod:`.placement_fuse`)."""
    graph.toposort()
    functions = _layer_functions(graph, exclude, fuse)
    walk = _Walk(products=products, tables=dict(tables or {}), unary=unary, outputs=_output_side(graph),
                 tail=float_tail(graph), made=float_made(graph, unary),
                 functions=functions)
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
    walk.plan.bounded = bounded_outputs(graph, quantized)
    return walk.plan


def _output_side(graph: gs.Graph) -> set[str]:
    """Graph outputs and the tensors that reach one through moves only (Reshape, Transpose, ...)."""
    out = {t.name for t in graph.outputs}
    for node in reversed(graph.nodes):  # topological order: readers first
        t = node.inputs[0] if node.op in SHARE and node.inputs else None
        if t is not None and all(r.op in SHARE and all(o.name in out for o in r.outputs) for r in t.outputs):
            out.add(t.name)
    return out


def _plan_node(graph: gs.Graph, node: gs.Node, walk: _Walk, per_channel: bool, exclude: tuple[str, ...]) -> None:
    """First walk: a layer, Add or Concat that quantizes, and the tensors it reads."""
    pat = excluded(node, exclude)
    if id(node) in walk.tables:
        walk.demanded.setdefault(walk.tables[id(node)][0], None)
        return
    if node.op in IGNORED or id(node) in walk.fused:  # fused: a MatMul's bias Add, planned with it
        return
    if pat and (node.op in COMPUTE + ADD + CONCAT + SHARE + AVERAGING + ACTIVATIONS + walk.unary):
        walk.entry(node, "skipped", f"excluded by --exclude {pat!r}")
        return
    if node.op in COMPUTE:
        why = _compute_reason(node)
        if why:
            walk.entry(node, "skipped", f"stays float: {why}")
            return
        _plan_compute(graph, node, walk, per_channel, exclude)
    elif node.op in ADD + CONCAT or (walk.products and node.op == "Mul" and _product(node)):
        if not all(_is_float(i) for i in node.inputs) or not _is_float(node.outputs[0]):
            walk.entry(node, "skipped", "stays float: not float32")
            return
        if node.outputs[0].name in walk.tail:
            walk.entry(node, "skipped", FLOAT_TAIL)
            return
        if not walk.products and in_island(node, walk.made):  # (without products: an Add or a Concat)
            walk.entry(node, "skipped", FLOAT_ISLAND)
            return
        for i in node.inputs:
            walk.demand(i)
        out = node.outputs[0]
        act = _fusable_activation(graph, out, exclude) if node.op not in CONCAT else None
        if act is not None:
            walk.fused[id(act)] = node_label(node)
            out = act.outputs[0]
        walk.quantized_nodes[id(node)] = out.name
        if node.op in CONCAT:
            for i in node.inputs:
                walk.groups.union(out.name, i.name)


NOT_ACTIVATIONS = ("DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "Cast", "ConvInteger",
                   "MatMulInteger", "Shape", "Size")


def _product(node: gs.Node) -> bool:
    """A Mul of two activations (integer-only quantizes it like Add): not of a constant, a one-element
    value (a scale: 8 bits would not hold it) or the output of quantization or integer machinery."""
    for t in node.inputs:
        if is_const(t) or (t.shape is not None and all(isinstance(d, int) for d in t.shape)
                           and int(np.prod(t.shape)) == 1):
            return False
        if t.inputs and t.inputs[0].op in NOT_ACTIVATIONS:
            return False
    return True


def _place_node(node: gs.Node, walk: _Walk, quantized: dict[str, None]) -> None:
    """Second walk: the node's quantization point, its shared or own scale, or why it stays float."""
    if id(node) in walk.tables:
        root, outs = walk.tables[id(node)]
        for o in outs:
            quantized.setdefault(o, None)
            walk.groups.add(o)
        if outs:
            walk.entry(node, "quantized", f"a look-up table of {root}'s codes (integer-only)", outs[0])
        else:
            walk.entry(node, "fused", f"fused into the look-up table of {root}'s codes")
    elif id(node) in walk.quantized_nodes:
        qp = walk.quantized_nodes[id(node)]
        quantized.setdefault(qp, None)
        walk.groups.add(qp)
        if not walk.listed(node):
            walk.entry(node, "quantized", "", qp)
    elif id(node) in walk.fused:
        walk.entry(node, "fused", f"fused into {walk.fused[id(node)]}")
    elif node.op in SHARE + AVERAGING + ACTIVATIONS + walk.unary and node.inputs and node.inputs[0].name in quantized \
            and all(_is_float(o) for o in node.outputs) and not (node.op in walk.unary and
                                                                 node.outputs[0].name in walk.outputs):
        if node.op == "Pad" and not pad_keeps_zero(node):
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
            f"own scale (onnxruntime's QLinear{node.op})" if node.op in walk.unary else \
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


def _layer_out(graph: gs.Graph, node: gs.Node, exclude: tuple[str, ...]) -> tuple[gs.Node | None, gs.Node | None,
                                                                                 gs.Tensor]:
    """A compute layer's fused bias Add (MatMul), fused Relu/Clip and the output after them."""
    out = node.outputs[0]
    add = bias_add(graph, node) if node.op == "MatMul" else None
    add = None if add is None or excluded(add, exclude) else add
    if add is not None:
        out = add.outputs[0]
    act = _fusable_activation(graph, out, exclude)
    return add, act, out if act is None else act.outputs[0]


def _layer_functions(graph: gs.Graph, exclude: tuple[str, ...], fuse: str) -> dict[int, list[gs.Node]]:
    """id(layer) → the activation nodes ``fuse`` fuses into it (none after a fused Relu/Clip)."""
    if fuse == "none":
        return {}
    out = {}
    for node in graph.nodes:
        if node.op in COMPUTE and not excluded(node, exclude) and not _compute_reason(node):
            _, act, t = _layer_out(graph, node, exclude)
            found = [] if act is not None else fused_function(graph, t, fuse, lambda n: excluded(n, exclude))
            if found:
                out[id(node)] = found
    return out


def _plan_compute(graph: gs.Graph, node: gs.Node, walk: _Walk, per_channel: bool, exclude: tuple[str, ...]) -> None:
    label, plan, fused = node_label(node), walk.plan, walk.fused
    x, w = node.inputs[0], node.inputs[1]
    add, act, out = _layer_out(graph, node, exclude)
    functions = walk.functions.get(id(node), [])
    for n in (add, act, *functions):
        if n is not None:
            fused[id(n)] = label
    out = functions[-1].outputs[0] if functions else out
    walk.quantized_nodes[id(node)] = out.name
    demand = walk.demand
    demand(x)  # a constant left operand (MatMul(W, x)) is quantized from its values
    if not is_const(w):  # MatMul/Gemm of two activations
        demand(w)
        return
    wv = const_value(w)
    axis, note = _weight_axis(node, wv, per_channel)
    use = WeightUse(label, node.op, w.name, axis, x.name, out.name, attrs=dict(node.attrs))
    if note:
        use.notes.append(note)
    if add is None:
        owner, idx = node, 2
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name else None
    else:
        owner, idx = add, 0 if add.inputs[1] is node.outputs[0] else 1
        bias = bias_add_constant(graph, add, idx, wv.shape[-1])
    if bias is not None:
        plan_bias(graph, node, use, wv, bias, owner, idx)
    plan.weights.append(use)
