"""offset: a SiLU / HardSwish output lifted to non-negative values, the offset taken back by the layers reading it.

Math: SiLU and HardSwish are bounded below (``min x * sigmoid(x) = -0.2785``, ``min x * hardsigmoid(x) =
-beta^2 / (4 alpha)``: -0.375 for HardSwish) and unbounded above. With zero points 0 a tensor ``y`` that dips
below 0 needs a signed format, and half of its codes hold ``[-max, -0.28]``, where no value lies. ``y' = y + c``
with ``c`` the bound rounded up to a multiple of 2^-6 is ``>= 0``: unsigned, its step half the signed one for
the same maximum. A layer that reads it computes ``W * y = W * y' - c * W * 1``, so its bias takes ``-c`` times
its weight's sum over each output's inputs; a padded Conv reads ``y'`` through a ``Pad`` with value ``c``
(where ``y`` was padded with 0) and pads no more itself. The network computes the same up to float rounding.
The ``Add`` of ``c`` (and the Pad) sit after the function, inside its float island (a target folds ``c`` into
the function's table). Runs before planning, after the other float rewrites.

Candidates (the report's ``offset_outputs`` counts the lifted; each other one is a candidate of op ``offset``
with its reason): the output of SiLU (``x * Sigmoid(x)``) or HardSwish (the op, or ``x * HardSigmoid(x)``) where
every reader is a ``Conv`` (explicit padding or none; opset 11+ for the Pad), ``Gemm`` (``transA = 0``) or
``MatMul`` with the tensor as its data input and a constant weight of its own. Left alone, each with a
reason in the log: a graph output, another reader (a residual Add, a Concat, a pool), a shared weight,
``auto_pad``. GELU is not lifted (the README: measured, it cost more than it gained). Not with
``integer_only`` / ``ort_kernels`` (their products make the function an integer op, where the Add would be one
more quantization point) nor ``fuse_activations="all"`` (the layer's own output is then the function's).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value, is_const, is_graph_output, new_constant, node_label
from .through import _function, reader_key

log = logging.getLogger(__name__)

GRID = 2.0**-6  # the offset: the function's bound rounded up to this grid (exact in float, and in the bias)


def offset_outputs(graph: gs.Graph) -> tuple[list[dict], dict[str, str]]:
    """Rewrite every candidate of ``graph`` in place (the module docstring): one entry per lifted tensor, and
    why each other SiLU / HardSwish output stays signed (tensor → reason)."""
    names, outputs, done, refused = UniqueNames(graph), {t.name for t in graph.outputs}, [], {}
    opset = int(graph.opset or 0)
    for x in list(graph.tensors().values()):
        if not isinstance(x, gs.Variable) or not x.outputs:
            continue
        key = reader_key(x, outputs)
        y = _function_output(x, key) if key is not None else None
        if y is None:
            continue
        why = _refusal(graph, y, opset)
        if why:
            log.info("quantize: %s stays signed: %s", y.name, why)
            refused[y.name] = why
            continue
        bound = float(np.min(_function(key)(np.linspace(-20.0, 0.0, 200001))))
        c = math.ceil((-bound + 1e-4) / GRID) * GRID
        _lift(graph, names, y, c)
        done.append({"tensor": y.name, "function": key[0] if key[0] != "x*" else f"x*{key[1][0]}", "offset": c})
    if done:
        graph.toposort()  # (once: the Adds, Pads and bias Adds were appended at the end)
    return done, refused


def _function_output(x: gs.Tensor, key: tuple) -> gs.Tensor | None:
    """The tensor holding ``f(x)`` for SiLU and HardSwish (bounded below), or None."""
    readers = list(x.outputs)
    if len(readers) == 1 and readers[0].op == "HardSwish":
        return readers[0].outputs[0]
    muls = [n for n in readers if n.op == "Mul"]
    if key[0] == "x*" and key[1][0] in ("Sigmoid", "HardSigmoid") and len(readers) == 2 and muls:
        return muls[0].outputs[0]  # (reader_key saw x * gate(x); through moves it is not x's own reader)
    return None  # GELU (the README: it cost svtrv2_text), Tanh, Sigmoid (bounded: their own formats)


def _refusal(graph: gs.Graph, y: gs.Tensor, opset: int) -> str | None:
    if is_graph_output(graph, y):
        return "a graph output"
    for r in y.outputs:
        why = _layer_refusal(r, y, opset)
        if why:
            return f"read by {r.op} {node_label(r)}: {why}"
    return None


def _layer_refusal(node: gs.Node, y: gs.Tensor, opset: int) -> str | None:
    if node.op not in ("Conv", "Gemm", "MatMul") or node.inputs[0] is not y:
        return "not a layer reading it as its data input"
    w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or any(r is not node for r in node.inputs[1].outputs):
        return "its weight is not a constant of its own"
    if node.op == "Conv" and str(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        return "auto_pad SAME (its padding is not written out)"
    if node.op == "Conv" and any(int(p) for p in node.attrs.get("pads", [])) and opset < 11:
        return f"it pads, and a Pad with a value as an input needs opset 11 (this model: {opset})"
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return "transA"
    if node.op == "MatMul" and w.ndim != 2:
        return f"a {w.ndim}-D weight"
    return None


def _padded(graph: gs.Graph, names: UniqueNames, node: gs.Node, lifted: gs.Tensor, c: float) -> gs.Tensor:
    """A padded Conv's input: ``lifted`` through a Pad with value ``c`` (``y = 0`` there), the Conv's own
    padding then 0; ``lifted`` itself where the Conv does not pad."""
    pads = [int(p) for p in node.attrs.get("pads", [])]
    if not any(pads):
        return lifted
    k = len(pads) // 2
    full = np.array([0, 0, *pads[:k], 0, 0, *pads[k:]], np.int64)
    shape = None
    if lifted.shape and len(lifted.shape) == k + 2:
        shape = [d + pads[i - 2] + pads[i - 2 + k] if i >= 2 and isinstance(d, int) else d if i < 2 else None
                 for i, d in enumerate(lifted.shape)]
    out = gs.Variable(names.fresh(f"{lifted.name}_padded"), dtype=lifted.dtype, shape=shape)
    ins = [lifted, new_constant(graph, f"{lifted.name}_pads", full, names),
           new_constant(graph, f"{lifted.name}_pad_value", np.array(c, np.float32), names)]
    graph.nodes.append(gs.Node("Pad", names.fresh(f"{node_label(node)}/offset_pad"), inputs=ins, outputs=[out],
                               attrs={"mode": "constant"}))
    node.attrs["pads"] = [0] * len(pads)
    return out


def _lift(graph: gs.Graph, names: UniqueNames, y: gs.Tensor, c: float) -> None:
    """``y + c`` for every reader of ``y``, each reader's bias minus ``c`` times its weight's input sums (a
    padded Conv reads it through a Pad with ``c``: :func:`_padded`)."""
    readers = list(y.outputs)
    lifted = gs.Variable(names.fresh(f"{y.name}_lifted"), dtype=y.dtype, shape=y.shape)
    cst = new_constant(graph, f"{y.name}_offset", np.array(c, np.float32), names)
    graph.nodes.append(gs.Node("Add", names.fresh(f"{y.name}/offset"), inputs=[y, cst], outputs=[lifted]))
    for node in readers:
        w = const_value(node.inputs[1]).astype(np.float64)
        if node.op == "Conv":
            sums = w.reshape(w.shape[0], -1).sum(axis=1)
        elif node.op == "Gemm":
            sums = w.sum(axis=1 if int(node.attrs.get("transB", 0)) else 0) * float(node.attrs.get("alpha", 1.0))
            sums = sums / float(node.attrs.get("beta", 1.0))
        else:
            sums = w.sum(axis=0)
        node.inputs[0] = _padded(graph, names, node, lifted, c) if node.op == "Conv" else lifted
        _add_bias(graph, names, node, -c * sums)


def _add_bias(graph: gs.Graph, names: UniqueNames, node: gs.Node, delta: np.ndarray) -> None:
    """``node``'s bias plus ``delta`` (a new constant): Conv/Gemm's own, a MatMul's bias Add; else an Add after it."""
    label = node_label(node)
    owner, slot = (node, 2) if node.op in ("Conv", "Gemm") else _matmul_bias(node)
    if owner is not None:
        has = len(owner.inputs) > slot and owner.inputs[slot].name
        old = const_value(owner.inputs[slot]) if has else np.zeros(1)
        if old is not None and old.size in (1, delta.size):
            same = old.size == delta.size
            base = old.astype(np.float64).reshape(-1) if same else np.full(delta.shape, float(old.flat[0]))
            shape = old.shape if has and same else delta.shape
            b = new_constant(graph, f"{label}_bias_offset", (base + delta).astype(np.float32).reshape(shape), names)
            while len(owner.inputs) <= slot:
                owner.inputs.append(gs.Variable.empty())
            owner.inputs[slot] = b
            return
    out = node.outputs[0]
    shape = [-1] + [1] * (len(out.shape) - 2) if node.op == "Conv" and out.shape else [-1]
    moved = gs.Variable(names.fresh(f"{out.name}_pre_offset"), dtype=out.dtype, shape=out.shape)
    node.outputs[0] = moved
    cst = new_constant(graph, f"{label}_bias_offset", delta.astype(np.float32).reshape(shape), names)
    graph.nodes.append(gs.Node("Add", names.fresh(f"{label}/bias_offset"), inputs=[moved, cst], outputs=[out]))


def _matmul_bias(node: gs.Node) -> tuple[gs.Node | None, int]:
    """A MatMul's bias Add (its one reader, adding a constant) and the constant's slot, or (None, 0)."""
    out = node.outputs[0]
    add = out.outputs[0] if len(out.outputs) == 1 and out.outputs[0].op == "Add" else None
    if add is None or len(add.inputs) != 2:
        return None, 0
    slot = 1 if add.inputs[0] is out else 0
    return (add, slot) if is_const(add.inputs[slot]) and len(add.inputs[slot].outputs) == 1 else (None, 0)
