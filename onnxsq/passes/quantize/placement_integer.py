"""``quantize --integer-only``: placement that leaves no float island where an integer form exists.

On top of the default rules (:mod:`.placement`):

- **Look-up tables.** A maximal chain of elementwise nodes whose only variable input is one quantized
  tensor (the *root*) — ``Sigmoid``, ``HardSigmoid``, ``HardSwish``, SiLU ``x * sigmoid(x)``, ``Tanh``,
  ``LeakyRelu``/``PRelu``, ``Gelu``, a decomposed HardSwish ``x * clip(x + 3, 0, 6) / 6``, a multiply
  by a per-channel constant, ... — reads the root through its DequantizeLinear and gets one
  QuantizeLinear on each tensor that leaves the chain, and none inside: an int8/uint8 root at a
  power-of-two scale then indexes 256 output codes (one table per position of the constants'
  broadcast shape, e.g. per channel), computed as onnxruntime computes ``DQ → op → Q``. A chain of
  ops that already have an integer kernel only (``Relu``, ``Clip``, ``Add``) is left to the default
  rules. Roots are tensors the default placement quantizes, or float graph inputs.
- **Products.** ``Mul`` of two activations quantizes both inputs and its output, like ``Add``: an
  integer product requantized by a shift.
- ``ort_kernels``: a chain ends at a ``Sigmoid``/``LeakyRelu`` (their output is quantized): onnxruntime
  runs that table as QLinearSigmoid/QLinearLeakyRelu and the rest (SiLU's product) as QLinearMul,
  where a whole SiLU table would run in float between its DQ and Q.
- Everything else (``Softmax``, ``LayerNormalization``, ``LRN``, a ``Div`` of two tensors, ...) has no
  exact integer form and stays float, with that reason.
- An ``Add`` or ``Concat`` in the float tail stays float here too (:data:`.placement.FLOAT_TAIL`): its
  integer form exists, but no layer reads its integers, and one output scale would zero a detector's
  scores beside its pixel boxes; the host decodes what it dequantizes anyway.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import const_value, is_const, is_graph_output
from ...simulate.lut import ELEMENTWISE
from .placement import UNARY, Plan, excluded, plan_walks

INTEGER_ALREADY = frozenset({"Relu", "Clip", "Add", "Identity"})  # a chain of only these needs no table
MAX_POSITIONS = 4096  # a constant's elements: one table per position (per channel, at most this many)


def plan_integer_only(graph: gs.Graph, *, per_channel: bool, exclude: tuple[str, ...],
                      ort_kernels: bool = False) -> Plan:
    """The integer-only placement: the default walks with integer products, then look-up tables
    grown from the tensors they quantize, then the walks again with the tables in place."""
    first = plan_walks(graph, per_channel, exclude, products=True)
    roots = set(first.activations) | {t.name for t in graph.inputs}
    tables = find_tables(graph, roots, exclude, ends=UNARY if ort_kernels else ())
    plan = plan_walks(graph, per_channel, exclude, products=True, tables=tables) if tables else first
    for e in plan.layers:
        if e.action == "skipped" and e.reason.startswith("stays float: no integer kernel"):
            e.reason = f"stays float: {e.op} has no exact integer form (not an elementwise function of one " \
                       "quantized tensor: no look-up table)"
    return plan


def _candidate(node: gs.Node, exclude: tuple[str, ...]) -> bool:
    if node.op not in ELEMENTWISE or node.domain not in ("", "ai.onnx", None) or excluded(node, exclude):
        return False
    if len(node.outputs) != 1 or not _float32(node.outputs[0]):
        return False
    shapes = [t.shape for t in (*node.inputs, node.outputs[0]) if t is not None and t.name and not is_const(t)]
    if any(s is None for s in shapes) or any(list(s) != list(shapes[-1]) for s in shapes):
        return False  # a constant that broadcasts the data to a larger shape makes no table of its elements
    for i in node.inputs:
        if i is None or not i.name:
            continue
        if not _float32(i):
            return False
        if is_const(i):
            v = const_value(i)
            if v is None or v.size > MAX_POSITIONS:
                return False
    return True


def _float32(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def find_tables(graph: gs.Graph, roots: set[str], exclude: tuple[str, ...],
                ends: tuple[str, ...] = ()) -> dict[int, tuple[str, list[str]]]:
    """Nodes that become look-up tables: id(node) → (root, the node's outputs that leave its chain);
    a chain grows past no node of an op in ``ends``."""
    graph.toposort()
    order = {id(n): k for k, n in enumerate(graph.nodes)}
    tables: dict[int, tuple[str, list[str]]] = {}
    for node in graph.nodes:
        if id(node) in tables or not _candidate(node, exclude):
            continue
        variables = {i.name for i in node.inputs if i is not None and i.name and not is_const(i)}
        if len(variables) != 1 or next(iter(variables)) not in roots:
            continue
        chain = _grow(node, next(iter(variables)), order, tables, exclude, ends)
        if all(n.op in INTEGER_ALREADY for n in chain):
            continue
        members = {id(n) for n in chain}
        root = next(iter(variables))
        for n in chain:
            out = n.outputs[0]
            leaves = is_graph_output(graph, out) or any(id(r) not in members for r in out.outputs)
            tables[id(n)] = (root, [out.name] if leaves else [])
    return tables


def _grow(start: gs.Node, root: str, order: dict[int, int], taken: dict, exclude: tuple[str, ...],
          ends: tuple[str, ...] = ()) -> list[gs.Node]:
    """``start`` and every elementwise node after it (in topological order) whose variable inputs are
    the root or the chain's own tensors (none past an op in ``ends``)."""
    chain, inside = [start], {start.outputs[0].name}
    heap = [] if start.op in ends else [(order[id(r)], id(r), r) for r in start.outputs[0].outputs]
    heapq.heapify(heap)
    seen = {id(start)}
    while heap:
        _, key, node = heapq.heappop(heap)
        if key in seen:
            continue
        seen.add(key)
        if key in taken or not _candidate(node, exclude):
            continue
        variables = {i.name for i in node.inputs if i is not None and i.name and not is_const(i)}
        if not variables & inside or not variables <= inside | {root}:
            continue
        chain.append(node)
        inside.add(node.outputs[0].name)
        for r in ([] if node.op in ends else node.outputs[0].outputs):
            heapq.heappush(heap, (order[id(r)], id(r), r))
    return chain
