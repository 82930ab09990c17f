"""fold-constants: compute, once, every node whose inputs are all constant, so later passes see weights.

Exporters and model zoos compute weights inside the graph: onnx's own light model zoo builds every
weight and BatchNorm parameter with ``ConstantOfShape`` (and ``Unsqueeze``/``Mul`` of them);
other exporters reshape, cast or transpose constant weights. A pass that reads weights
(BatchNorm folding, thresholding, quantization) sees such a weight as a computed tensor and must
leave the layer alone. Folding replaces each such node by the constant it always computes.

Math: none of our own. The values are computed by onnx-graphsurgeon's ``fold_constants``, which
runs the constant part of the graph in onnxruntime with the same kernels the model would run, so a
folded constant equals what the node computed, bit for bit.

Handled: any chain of default-domain nodes whose every input is an initializer or a ``Constant``
output. Refused, each with a reason in the report: ``QuantizeLinear``/``DequantizeLinear`` (a QDQ
model's integer weights must stay integers, not become float again), random ops (their output is
not one constant), nodes of other domains, shape computations (``Shape`` of an activation is only
constant for one input size), and nodes inside control-flow subgraphs. A node onnxruntime cannot
evaluate stays, with onnxruntime's reason.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import const_value, export_like, import_graph, node_label
from ..model_io import ModelLike, load_model
from ..report import Report

log = logging.getLogger(__name__)

PASS_NAME = "fold-constants"
# Integer weights of QDQ models stay integers; random ops are not one constant.
KEEP_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})


def _why_kept(node: gs.Node) -> str | None:
    if (node.domain or "") not in ("", "ai.onnx"):
        return f"domain {node.domain!r}: only default-domain ops are evaluated"
    if node.op in KEEP_OPS:
        return f"{node.op} is kept (integer weights stay integers; random ops are not one constant)"
    return None


def foldable_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes (``Constant`` itself aside) whose every input is constant or computed by such a node, in
    graph order: what folding computes. ``graph`` must be topologically sorted."""
    out, computed = [], set()
    for node in graph.nodes:
        if node.op == "Constant" or not node.inputs or not node.outputs:
            continue
        if all(t.name == "" or id(t) in computed or const_value(t) is not None for t in node.inputs):
            out.append(node)
            if _why_kept(node) is None:
                computed.update(id(t) for t in node.outputs)
    return out


def fold_constants(model: ModelLike) -> tuple[onnx.ModelProto, Report]:
    """Fold every constant computation of ``model`` (a ModelProto, not modified, or a path); returns
    the new model (same IR version and opsets) and the report. A model with nothing to fold is
    returned as it is, without a graph import."""
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    if not has_constant_computation(original):
        report = Report(PASS_NAME)
        report.summary.update(candidates=0, folded=0, left=0)
        return original, report
    graph = import_graph(original)
    report = fold_constants_graph(graph)
    return export_like(graph, original), report


def has_constant_computation(model: onnx.ModelProto) -> bool:
    """A cheap look at the proto: does any node (``Constant`` aside) read only constants?"""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return any(n.op_type != "Constant" and n.input and all(not i or i in consts for i in n.input)
               for n in model.graph.node)


def fold_constants_graph(graph: gs.Graph) -> Report:
    """Fold every constant computation of ``graph`` in place (onnx-graphsurgeon's ``fold_constants``
    with onnxruntime); returns the report: one candidate per node that had only constant inputs,
    folded or kept with the reason. A graph with nothing to fold is not touched (no onnxruntime run)."""
    report = Report(PASS_NAME)
    graph.toposort()
    first = foldable_nodes(graph)
    kept = {id(n): why for n in first for why in [_why_kept(n)] if why}
    if len(kept) < len(first):
        # One onnxruntime run over the whole constant part first (fast); where it fails, again in
        # partitions, so that one node onnxruntime refuses does not keep the rest computed.
        _run_fold(graph, partitioning=None)
        if any(id(n) not in kept and not _done(n) for n in first):
            _run_fold(graph, partitioning="basic")
    folded = 0
    for node in first:
        label = node_label(node)
        if id(node) in kept:
            report.add(label, node.op, "skipped", kept[id(node)])
        elif _done(node):
            report.add(label, node.op, "folded", "computed once, now a constant")
            folded += 1
        else:
            report.add(label, node.op, "skipped", "onnxruntime could not evaluate it on its constant inputs")
    if folded:
        graph.cleanup(remove_unused_graph_inputs=False)
    report.summary.update(candidates=len(first), folded=folded, left=len(first) - folded)
    log.info("fold-constants: %d of %d constant computation(s) folded", folded, len(first))
    return report


def lift_constant_nodes(graph: gs.Graph) -> int:
    """Turn every ``Constant`` node's output into an initializer (gs.Constant), in place; returns how
    many. Passes that rewrite weights (quantize's bias correction, int8 weights) write a constant's
    values, which a Constant node's output (a Variable to gs) silently ignores; PaddlePaddle's
    exports hold every weight in Constant nodes."""
    lifted = 0
    for node in graph.nodes:
        if node.op != "Constant" or len(node.outputs) != 1 or (node.domain or "") not in ("", "ai.onnx"):
            continue
        value = const_value(node.outputs[0])
        if value is None or any(o is node.outputs[0] for o in graph.outputs):
            continue
        out = node.outputs[0]
        node.outputs.clear()
        out.to_constant(np.require(value, requirements="C"))
        lifted += 1
    if lifted:
        graph.cleanup(remove_unused_graph_inputs=False)
    return lifted


def _done(node: gs.Node) -> bool:
    """Folded: gs turned the node's outputs into constants (which detaches them from the node)."""
    return not node.outputs or all(isinstance(t, gs.Constant) for t in node.outputs)


def _run_fold(graph: gs.Graph, *, partitioning: str | None) -> None:
    """gs's fold_constants, quiet: gs logs through its own logger to stdout and onnxruntime warns on
    stderr; a library must not print (what matters is in the report)."""
    from onnx_graphsurgeon.logger import G_LOGGER

    from ..runtime import import_ort

    import_ort().set_default_logger_severity(3)
    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL
    try:
        # Only constants: shapes of activations are constant for one input size only.
        graph.fold_constants(fold_shapes=False, recurse_subgraphs=False, flatten_subgraphs=False,
                             partitioning=partitioning, error_ok=True, size_threshold=None,
                             should_exclude_node=lambda n: _why_kept(n) is not None)
    finally:
        G_LOGGER.severity = before


def merge_into(report: Report, folded: Report) -> None:
    """Put a fold-constants result into the report of the pass that ran it first: its count in the
    summary, and one warning naming what stayed computed."""
    if not folded.candidates:
        return
    report.summary["constants_folded"] = folded.summary["folded"]
    left = folded.skipped()
    if left:
        report.warnings.append(f"{len(left)} constant computation(s) left in the graph: "
                               + "; ".join(f"{c.name} ({c.reason})" for c in left[:3]))
