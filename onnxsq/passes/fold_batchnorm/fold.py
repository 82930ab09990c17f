"""fold-batchnorm: the pass that removes eval-mode BatchNormalization, and what it runs.

An eval-mode BN over channel axis 1 is ``y = s * x + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s`` (float64 throughout, stored back in each tensor's own dtype: :mod:`.bn_math`).
In order: computed weights become constants (:mod:`onnxsq.passes.fold_constants`); every BN goes through
the rules of :mod:`.rules` (into the layer before, into the Conv after, else Mul/Add); then the affine folds
of :mod:`.affine` put constant Mul/Add/Sub/Div after layers (exporters' decomposed BNs, and the rules'
Mul/Add replacements) into the layers' weights and biases, :mod:`.relu_scale` moves positive scales
left before a ReLU into the Convs after it, and :mod:`.scale_back` moves positive scales after a ReLU or
pool back into the layer before it.

Refused before any rule, with the reason in the report: training mode (``training_mode=1``, or the
statistics outputs, which select training mode before opset 14), ``spatial=0`` and pre-opset-7 BN,
parameters that are not four constant vectors of one length, and BN inside control-flow subgraphs.
A weight or bias shared with other nodes is cloned, never changed under them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...errors import InvalidOptionError
from ...graph import UniqueNames, const_value, export_like, import_graph, is_graph_output, node_label
from ...model_io import (
    ModelLike,
    check_model,
    default_opset,
    load_model,
)
from ...report import Report
from ..fold_constants import fold_constants_graph, merge_into
from . import bn_math as bm
from .affine import fold_affine_graph
from .edit import TensorTypes
from .relu_scale import fold_relu_scales_graph
from .rules import RULES, Context, Rule, ToMulAdd
from .scale_back import fold_scales_back_graph

log = logging.getLogger(__name__)

PASS_NAME = "fold-batchnorm"


def fold_batchnorm(model: ModelLike, *, verify: bool = False, standalone: Literal["affine", "keep"] = "affine",
                   rtol: float | None = None, atol: float | None = None, seed: int = 0,
                   samples: int = 2, fold_affine: bool = True, input_shapes: Mapping[str, Sequence[int]] | None = None
                   ) -> tuple[onnx.ModelProto, Report]:
    """Fold every foldable BatchNormalization in ``model`` (a ModelProto or a path); remove the BN nodes.

    Returns the new model (same IR version and opsets) and a report with one entry per BN. With
    ``verify``, original and result are run in onnxruntime on ``samples`` seeded random inputs and a
    difference beyond ``rtol``/``atol`` (default: by the model's float type) raises VerificationError.
    ``fold_affine``: also fold constant Mul/Add/Sub/Div after layers (:mod:`.fold_affine`; their
    entries are in the same report). ``input_shapes`` (input name -> shape) fixes the random inputs'
    shapes (:mod:`onnxsq.shapes`).
    """
    if standalone not in ("affine", "keep"):
        raise InvalidOptionError(f"standalone must be 'affine' or 'keep', not {standalone!r}")
    if isinstance(model, onnx.ModelProto):
        # Only read (graphsurgeon copies what it changes), so the caller's proto needs no deep copy.
        check_model(model)
        original = model
    else:
        original = load_model(model)
    graph = import_graph(original)
    # weights computed in the graph (ConstantOfShape, Unsqueeze of constants) become weights first
    constants = fold_constants_graph(graph)
    report = fold_batchnorm_graph(graph, opset=default_opset(original), types_from=original, standalone=standalone,
                                  fold_affine=fold_affine)
    merge_into(report, constants)
    result = export_like(graph, original)
    if verify:
        from ...verify import verify_folded

        verify_folded(original, result, report, rtol=rtol, atol=atol, seed=seed, samples=samples,
                      input_shapes=input_shapes)
    return result, report


def fold_batchnorm_graph(graph: gs.Graph, *, opset: int, types_from: onnx.ModelProto | None = None,
                         standalone: Literal["affine", "keep"] = "affine", fold_affine: bool = True,
                         scale_back: bool = True) -> Report:
    """:func:`fold_batchnorm` on an onnx-graphsurgeon graph of default-domain ``opset``, in place.

    For passes that hold a graph already (quantize folds first): no export and re-import, so no
    extra copy of the weights. ``types_from``: the model ``graph`` came from, for onnx shape
    inference where a tensor's rank or type is unknown (None: unknown ranks stay unknown). The graph
    is cleaned up (removed BN nodes dropped); the report is :func:`fold_batchnorm`'s. The affine folds
    run last: BN folds (and BN→Mul/Add replacements, which may then fold into a layer) come first.
    ``scale_back``: run :mod:`.scale_back` (quantize turns it off for per-tensor weights: a per-channel scale
    moved into a layer spreads its channels' ranges under one weight shift; fastmrz_mrz_seg 6.6 -> 0.0 dB).
    """
    if standalone not in ("affine", "keep"):
        raise InvalidOptionError(f"standalone must be 'affine' or 'keep', not {standalone!r}")
    report = Report(PASS_NAME)
    ctx = Context(graph, TensorTypes(types_from), UniqueNames(graph))
    bns = [n for n in graph.nodes if n.op == "BatchNormalization"]
    pending: list[tuple[gs.Node, np.ndarray, np.ndarray, list[str]]] = []
    for bn in bns:
        params = _bn_params(graph, bn, opset)
        if isinstance(params, str):
            report.add(node_label(bn), bn.op, "skipped", params)
        else:
            pending.append((bn, *params, []))
    rules = RULES if standalone == "affine" else tuple(r for r in RULES if not isinstance(r, ToMulAdd))
    for rule in rules:  # each rule over every BN the ones before left: a BN between two layers joins the first
        pending = [p for p in pending if not _apply(rule, ctx, report, *p)]
    for bn, _, _, reasons in pending:
        report.add(node_label(bn), bn.op, "skipped", "; ".join(reasons))
    order = {node_label(n): i for i, n in enumerate(bns)}
    report.candidates.sort(key=lambda c: order.get(c.name, len(order)))  # graph order, not decision order
    _report_subgraphs(report, graph)
    affine = fold_affine_graph(graph, opset=opset, types=ctx.types, names=ctx.names) if fold_affine else None
    if affine is not None:  # scales left before a ReLU go into the Convs after it
        fold_relu_scales_graph(graph, affine, ctx.names)
        if scale_back:  # and those after a ReLU/pool into the layer before
            fold_scales_back_graph(graph, affine, ctx.names)
        graph.cleanup(remove_unused_graph_inputs=False)
    if affine is None:
        graph.cleanup(remove_unused_graph_inputs=False)  # fold_affine_graph cleans up itself
    _summarize(report, sum(n.op == "BatchNormalization" for n in graph.nodes))
    if affine is not None:
        report.candidates.extend(affine.candidates)
        report.summary.update(affine.summary)
    log.info("fold-batchnorm: %(bn_nodes)d BN, %(folded)d folded, %(replaced)d replaced, %(left)d left",
             report.summary)
    return report


def _apply(rule: Rule, ctx: Context, report: Report, bn: gs.Node, s: np.ndarray, t: np.ndarray,
           reasons: list[str]) -> bool:
    """Try ``rule`` on ``bn``: True when rewritten (and reported), else its reason joins ``reasons``."""
    match = rule.check(ctx, bn, s, t)
    if isinstance(match, str):
        reasons.append(match)
        return False
    done = rule.rewrite(ctx, match)
    reason = done.reason if done.action == "folded" else f"{done.reason}; not folded: " + "; ".join(reasons)
    report.add(node_label(bn), "BatchNormalization", done.action, reason, into=done.into, pattern=done.pattern,
               rule=rule.name)
    return True


def _bn_params(graph: gs.Graph, bn: gs.Node, opset: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) of an eval-mode BN, or why it cannot be treated as one."""
    if opset < 7:
        return f"BatchNormalization of opset {opset} (< 7: is_test/consumed_inputs form) is not supported"
    if int(bn.attrs.get("training_mode", 0)) == 1:
        return "training_mode=1: normalizes with batch statistics, not an inference-time affine map"
    extra = [o.name for o in bn.outputs[1:] if o.name]
    if extra:
        # Before opset 14 the outputs alone select training mode; used or not, Y is then normalized
        # with the batch's statistics, which no constant fold reproduces.
        used = [o.name for o in bn.outputs[1:] if o.name and (o.outputs or is_graph_output(graph, o))]
        return (f"training form: {len(bn.outputs)} outputs (running/saved statistics"
                f"{', used: ' + ', '.join(used) if used else ''}) mean it normalizes with batch statistics")
    if int(bn.attrs.get("spatial", 1)) == 0:
        return "spatial=0 (per-activation statistics) is not a per-channel affine map"
    if len(bn.inputs) < 5:
        return f"has {len(bn.inputs)} inputs, expected 5"
    values = [const_value(t) for t in bn.inputs[1:5]]
    names = ("scale", "B", "mean", "var")
    for name, v, t in zip(names, values, bn.inputs[1:5]):
        if v is None:
            return f"{name} ({t.name}) is not constant"
    sizes = {v.size for v in values}
    if len(sizes) != 1 or any(v.ndim != 1 for v in values):
        return f"parameter shapes {[list(v.shape) for v in values]} are not four vectors of one length"
    return bm.bn_affine(*values, eps=float(bn.attrs.get("epsilon", 1e-5)))


def _report_subgraphs(report: Report, graph: gs.Graph, owner: str = "") -> None:
    for node in graph.nodes:
        if owner and node.op == "BatchNormalization":
            report.add(node_label(node), node.op, "skipped",
                           f"inside a control-flow subgraph of {owner}: subgraphs are not folded")
        for value in node.attrs.values():
            subs = value if isinstance(value, list) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    _report_subgraphs(report, sub, owner or f"{node.op} {node_label(node)}")


def _summarize(report: Report, bn_left: int) -> None:
    actions = [c.action for c in report.candidates if c.op == "BatchNormalization"]
    report.summary.update(
        bn_nodes=len(actions),
        folded=actions.count("folded"),
        replaced=actions.count("replaced"),
        left=actions.count("skipped"),
        bn_left=bn_left,
    )


def summarize_for_quantize(frep: Report, *, context: str = "stay float") -> tuple[dict[str, int], list[str]]:
    """The summary entries and warnings of the folds ``quantize`` and QAT run first (one wording for both).

    ``context``: what happens to a BN left unfolded (QAT trains it with batch statistics)."""
    bns = [c for c in frep.candidates if c.op == "BatchNormalization"]
    summary: dict[str, int] = {}
    if bns:
        summary["batchnorm_folded_first"] = sum(1 for c in bns if c.changed)
    if frep.summary.get("affine_nodes"):
        summary["affine_folded_first"] = frep.summary["affine_folded"]
    warnings = []
    left = [c.name for c in bns if not c.changed]
    if left:
        warnings.append(f"{len(left)} BatchNormalization node(s) could not be folded and {context}: "
                        + ", ".join(left[:5]))
    # a rank-3+ MatMul's Add stays as its bias, which placement quantizes with the layer
    stay = [c for c in frep.candidates if c.op not in ("BatchNormalization", "Relu", "LeakyRelu") and not c.changed
            and "bias_of" not in c.details and "moved_back" not in c.details]  # a scale not moved through a ReLU
    # (either way) quantizes as before: no warning
    if stay:
        warnings.append(f"{len(stay)} constant Mul/Add/Sub/Div node(s) after layers could not be folded into them "
                        "(each quantizes on its own, or stays float): "
                        + "; ".join(f"{c.name} ({c.reason})" for c in stay[:3]))
    return summary, warnings
