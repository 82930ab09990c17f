"""fold-forward: chains of constant Mul/Add/Sub/Div *before* Conv layers folded into those layers.

fold-batchnorm's affine folds (:mod:`.fold_batchnorm.affine`) take a scale/shift that follows a layer
back into it; this pass takes one that precedes a layer forward into it, which is what is left when
the scale/shift follows a nonlinearity: PaddlePaddle's learnable affine blocks ``HardSwish → Mul(a) →
Add(b) → Conv`` (PP-LCNetV3, the backbone of PP-OCRv5's recognizer). quantize runs it right after
fold-batchnorm (``QuantizeConfig.fold_forward``).

Math (float64, stored back in the weights' dtype; composition as in :func:`.bn_math.compose_affine`):
a chain of constant elementwise ops on ``x`` is one map ``u = a * x + b`` (written per input channel,
axis 1; folded only where every channel has the same ``a`` and ``b``: see Refused). A Conv with ``g``
groups and weight ``W [M, C/g, k...]`` reads input channel ``c(o, j) = (o // (M/g)) * C/g + j`` in
output ``o``'s weight column ``j``:

- the scale: zero padding pads ``a * x`` with ``a * 0 = 0``, so ``Conv(a * x) = Conv'(x)`` with
  ``W'[o, j] = W[o, j] * a[c(o, j)]`` — exact for any padding, stride, dilation and group count;
- the shift, on a Conv without padding: every window lies inside the input, so ``b`` adds the same
  ``Σ_{j,k} W[o, j, k] * b[c(o, j)]`` to every output: it goes into the bias, and the Conv reads ``x``;
- the shift, on a padded Conv: border windows read zeros where ``b`` would have been, so the shift stays
  before it as one ``Add(x, b / a)`` (``a * x + b = a * (x + b / a)``; every ``a`` must be nonzero), and
  the Conv takes the scale;
- through ops linear in ``u`` on the way to the Convs (``GlobalAveragePool``/``AveragePool``, a ``Mul``
  by a tensor that is not itself divided by ``a``: a squeeze-excitation gate, which its own Convs restore
  first): ``u / a`` flows through them as ``op(u) / a`` and every Conv at the end takes ``a``; the shift
  stays (``(u + b) * g`` is not ``u * g`` plus a constant).

Why (measured on the fidelity bench's data, bench/fidelity.py): quantize puts a quantization point on
every input and the output of an ``Add``, so the block is rounded twice on nearly the same grid —
``Q(Q(a * h) + b)``: the rounded product plus a ``b`` that is no multiple of the step rounds again, a
systematic error of up to half a step on every element. Folded, one point is left (the HardSwish
output before a 1×1 Conv, the Add's output before a padded one or a squeeze-excitation): output SQNR
ppocrv5_rec 11.3 → 13.5 dB (12.5 without the squeeze-excitation paths), ppocrv5_det 5.7 → 7.0,
ppocrv4_rec 10.4 → 10.9, ppocrv4_det 10.0 → 10.6; the other trained zoo models have no chain that folds
(the README's fidelity table).

Handled: a chain of Mul/Add/Sub/Div with one constant operand each, each link read only by the next,
whose composed scale and shift are the same on every channel (a scalar, or a per-channel constant
with equal values), and whose last tensor is read only by Conv data inputs with constant float weights
(directly or through the linear ops above).
Refused, each with its reason in the report (a chain counts as a candidate when some reader of its end
is a layer, or a pool or two-tensor Mul that a layer reads):

- a scale or shift that differs between channels — a BatchNorm after an activation (Keras/tf2onnx
  ``Relu → Mul → Add``): it evens the channels' ranges for the tensor's one activation shift, and folded
  into the next layer's input channels it would undo that (measured: vietcombank_captcha −11.7 dB,
  fastmrz_mrz_seg −5.1);
- the constant Mul/Div right after a product of two tensors, the ``/ 6`` of a spelled-out HardSwish
  ``x * relu6(x + 3) / 6``: quantize takes the product and it as one function (folding the ``/ 6`` cost
  1.7 dB on ppocr_mobile_v2_cls); the chain after it still folds (PP-OCRv4's ``… / 6 → Mul → Add``);
- a reader that is not a Conv's data input: MatMul/Gemm (folding the decomposed LayerNorm's
  ``Mul(gamma) → Add(beta)`` into the next MatMul measured −0.2 dB on ppocrv5_rec: nothing is saved,
  the bias Add fuses there anyway), ConvTranspose, any other op, a Conv reading it as weight or bias;
- a chain tensor that is a graph output; constants that are not per input channel (numpy broadcasting:
  ``[C]`` on an NCHW tensor runs along W), or not float; ``c / x`` and division by zero (not affine);
  Convs reading different channel counts or ranks; a zero scale where the shift has to stay; a shift
  alone before a padded Conv (nothing to fold).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import UniqueNames, const_value, export_like, import_graph, is_graph_output, new_constant, node_label
from ..model_io import ModelLike, load_model
from ..report import Report
from .fold_batchnorm import bn_math as bm
from .fold_batchnorm.affine import _var_index
from .fold_batchnorm.edit import set_const_input

log = logging.getLogger(__name__)

PASS_NAME = "fold-forward"
LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SAME = ("SAME_UPPER", "SAME_LOWER")
THROUGH = ("GlobalAveragePool", "AveragePool")  # linear in their input: the scale passes (and a Mul by a gate)
PER_CHANNEL = ("a per-channel scale or shift (a BatchNorm after an activation) evens the channels' ranges for the "
               "tensor's one shift; folded into the next layer it would undo that (vietcombank_captcha -11.7 dB, "
               "fastmrz_mrz_seg -5.1): only a scale and shift the same on every channel fold")
SPELLED_OUT = ("a constant Mul/Div of a product x * g(x) (a spelled-out HardSwish's / 6) stays with it: quantize "
               "takes the product and it as one function (folding it cost 1.7 dB on ppocr_mobile_v2_cls)")


@dataclass
class _Chain:
    steps: list[gs.Node]  # from x's reader to the last link
    x: gs.Tensor  # what the chain reads
    out: gs.Tensor  # what the layers read

    @property
    def label(self) -> str:
        return node_label(self.steps[0])

    @property
    def pattern(self) -> str:
        return "→".join(n.op for n in self.steps)


def fold_forward(model: ModelLike) -> tuple[onnx.ModelProto, Report]:
    """Fold every constant scale/shift chain before Conv layers of ``model`` into them; returns the new
    model (same IR version and opsets) and the report, one candidate per chain."""
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    graph = import_graph(original)
    report = fold_forward_graph(graph)
    return export_like(graph, original), report


def fold_forward_graph(graph: gs.Graph) -> Report:
    """:func:`fold_forward` on an onnx-graphsurgeon graph, in place (the graph is cleaned up)."""
    report = Report(PASS_NAME)
    names = UniqueNames(graph)
    for head in [n for n in graph.nodes if _is_head(graph, n)]:
        chain = _walk(graph, head)
        if _leads_to_layer(chain.out):
            _fold(graph, names, report, chain)
    folded = sum(c.changed for c in report.candidates)
    graph.cleanup(remove_unused_graph_inputs=False)
    if folded:
        graph.toposort()  # a kept shift's Add was appended
    report.summary.update(chains=len(report.candidates), folded=folded)
    log.info("fold-forward: %d of %d scale/shift chains before layers folded", folded, len(report.candidates))
    return report


def _leads_to_layer(tensor: gs.Tensor) -> bool:
    """Some reader is a layer, or a pool or two-tensor Mul that a layer reads: a candidate."""
    def through(r: gs.Node) -> bool:
        return r.op in THROUGH or (r.op == "Mul" and not any(const_value(t) is not None for t in r.inputs))
    return any(r.op in LAYERS or (through(r) and any(n.op in LAYERS for n in r.outputs[0].outputs))
               for r in tensor.outputs)


def _is_head(graph: gs.Graph, node: gs.Node) -> bool:
    """An affine op with one constant operand whose variable input is not the end of another such link."""
    var = _var_index(node)
    if var is None:
        return False
    x = node.inputs[var]
    before = x.inputs[0] if len(x.inputs) == 1 else None
    return before is None or _var_index(before) is None or len(x.outputs) != 1 or is_graph_output(graph, x)


def _walk(graph: gs.Graph, head: gs.Node) -> _Chain:
    steps = [head]
    out = head.outputs[0]
    while len(out.outputs) == 1 and not is_graph_output(graph, out) and _var_index(out.outputs[0]) is not None:
        steps.append(out.outputs[0])
        out = steps[-1].outputs[0]
    return _Chain(steps, head.inputs[_var_index(head)], out)


def _fold(graph: gs.Graph, names: UniqueNames, report: Report, chain: _Chain) -> None:
    if _completes_product(chain):  # x * f(x) / 6: the spelled-out HardSwish keeps its last link
        if len(chain.steps) == 1:
            report.add(chain.label, chain.pattern, "skipped", SPELLED_OUT, pattern=chain.pattern)
            return
        chain = _Chain(chain.steps[1:], chain.steps[0].outputs[0], chain.out)
    readers: list[gs.Node] = []  # the Convs that take the scale, directly or through THROUGH ops
    through: list[gs.Node] = []
    found = _reach(graph, chain.out, {id(chain.out)}, readers, through) or _check(graph, chain, readers)
    if isinstance(found, str):
        report.add(chain.label, chain.pattern, "skipped", found, pattern=chain.pattern)
        return
    a, b = found
    keep = (any(_padded(r) for r in readers) or bool(through)) and bool(np.any(b != 0))
    if keep and np.any(a == 0):
        report.add(chain.label, chain.pattern, "skipped", "a zero scale on some channel, and a padded Conv "
                   "reader: the shift cannot stay before it as x + b / a", pattern=chain.pattern)
        return
    if keep and np.all(a == 1):
        report.add(chain.label, chain.pattern, "skipped", "a shift alone before a padded Conv: nothing to "
                   "fold (its zero padding would read the shift)", pattern=chain.pattern)
        return
    rank, dtype = const_value(readers[0].inputs[1]).ndim, const_value(readers[0].inputs[1]).dtype
    for r in readers:
        _rewrite_conv(graph, names, r, a, None if keep else b)
    if not keep:
        for r in list(chain.out.outputs):
            r.inputs[[t is chain.out for t in r.inputs].index(True)] = chain.x
    for n in chain.steps:
        n.inputs.clear()
        n.outputs.clear()
    if keep:  # the chain's last tensor (its name, type and shape) is now written by x + b / a
        _shift_before(graph, names, chain, bm.cast_like(_layout(b / a, rank), dtype))
    into = [node_label(r) for r in readers]
    why_kept = f"read through {', '.join(sorted({n.op for n in through}))}" if through else "a padded Conv"
    how = f"the shift kept before them as one Add ({why_kept})" if keep else "the shift into their biases"
    report.add(chain.label, chain.pattern, "folded", f"into Conv {', '.join(into)}: the scale into the weights, "
               f"{how}", pattern=chain.pattern, into=into, shift="kept" if keep else "bias",
               through=[node_label(n) for n in through])


def _completes_product(chain: _Chain) -> bool:
    """The chain starts with a constant Mul/Div of a product of two tensors (``x * relu6(x + 3) / 6``)."""
    before = chain.x.inputs[0] if len(chain.x.inputs) == 1 else None
    return (chain.steps[0].op in ("Mul", "Div") and before is not None and before.op == "Mul"
            and not any(const_value(t) is not None for t in before.inputs))


def _check(graph: gs.Graph, chain: _Chain, readers: list[gs.Node]) -> tuple[np.ndarray, np.ndarray] | str:
    """The chain's (a, b) per input channel of its Conv readers, or why it cannot fold."""
    if is_graph_output(graph, chain.out):
        return f"its output {chain.out.name} is also a graph output"
    shapes = set()
    for r in readers:
        w = const_value(r.inputs[1])
        shapes.add((w.ndim, w.shape[1] * int(r.attrs.get("group", 1))))
    if len(shapes) != 1:
        return "its Conv readers read different channel counts or ranks"
    rank, channels = shapes.pop()
    steps = []
    for node in reversed(chain.steps):  # from the chain's end back to x
        var = _var_index(node)
        c = const_value(node.inputs[1 - var])
        if not np.issubdtype(c.dtype, np.floating):
            return f"the constant of {node.op} {node_label(node)} is {c.dtype}, not float"
        steps.append((node.op, c, var == 0, node_label(node)))
    composed = bm.compose_chain(steps, rank, channels)
    if isinstance(composed, str):
        return composed
    a, b = composed
    if np.any(a != a[0]) or np.any(b != b[0]):
        return PER_CHANNEL
    return a, b


def _reach(graph: gs.Graph, tensor: gs.Tensor, scaled: set[int], convs: list[gs.Node], through: list[gs.Node]) -> str:
    """Collect the Convs that read ``tensor`` directly or through ops linear in it (``THROUGH``: pools, a
    Mul by a tensor that is not itself scaled: a squeeze-excitation gate), or say why not."""
    for r in tensor.outputs:
        if r.op in THROUGH or (r.op == "Mul" and len(r.inputs) == 2 and not any(const_value(t) is not None
                                                                                   for t in r.inputs)):
            others = [t for t in r.inputs if t is not tensor]
            if r.op == "Mul" and (len(others) != 1 or id(others[0]) in scaled):
                return f"Mul {node_label(r)} multiplies it with itself (not linear in it)"
            out = r.outputs[0]
            if is_graph_output(graph, out):
                return f"the output {out.name} of {r.op} {node_label(r)} on its way to a Conv is a graph output"
            through.append(r)
            scaled.add(id(out))
            why = _reach(graph, out, scaled, convs, through)
        else:
            why = _reader_error(tensor, r)
            if not why and any(c is r for c in convs):
                why = f"{r.op} {node_label(r)} reads it on two paths"
            convs.append(r)
        if why:
            return why
    return ""


def _reader_error(tensor: gs.Tensor, r: gs.Node) -> str:
    label = f"{r.op} {node_label(r)}"
    if r.op in ("MatMul", "Gemm"):
        return (f"read by {label}: folding into MatMul/Gemm is not done (LayerNorm's gamma/beta into the next "
                "MatMul cost 0.2 dB on ppocrv5_rec)")
    if r.op != "Conv":
        return f"read by {label}, not only by Conv layers"
    if r.inputs[0] is not tensor or any(t is tensor for t in r.inputs[1:]):
        return f"{label} reads it as a weight or bias"
    w = const_value(r.inputs[1]) if len(r.inputs) > 1 else None
    if w is None or not np.issubdtype(w.dtype, np.floating):
        return f"the weight of {label} is not a float constant"
    if len(r.inputs) > 2 and r.inputs[2].name and const_value(r.inputs[2]) is None:
        return f"the bias of {label} is not constant"
    return ""


def _padded(conv: gs.Node) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return auto in SAME or any(int(p) != 0 for p in conv.attrs.get("pads", []))


def _per_column(v: np.ndarray, w: np.ndarray, group: int) -> np.ndarray:
    """``v`` (one value per input channel) laid out as ``W`` grouped ``[g, M/g, C/g, k...]`` reads it."""
    return v.reshape(group, 1, w.shape[1], *([1] * (w.ndim - 2)))


def _rewrite_conv(graph: gs.Graph, names: UniqueNames, conv: gs.Node, a: np.ndarray, b: np.ndarray | None) -> None:
    """``W'[o, j] = W[o, j] a[c(o, j)]``; with ``b``: ``bias'[o] = bias[o] + Σ_{j,k} W[o, j, k] b[c(o, j)]``."""
    w = const_value(conv.inputs[1])
    group = int(conv.attrs.get("group", 1))
    grouped = w.astype(np.float64).reshape(group, w.shape[0] // group, *w.shape[1:])
    if b is not None and np.any(b != 0):
        has_bias = len(conv.inputs) > 2 and conv.inputs[2].name
        bias = const_value(conv.inputs[2]).astype(np.float64) if has_bias else np.zeros(w.shape[0])
        shift = (grouped * _per_column(b, w, group)).sum(axis=tuple(range(2, grouped.ndim))).reshape(-1)
        set_const_input(graph, conv, 2, bm.cast_like(bias + shift, w), f"{node_label(conv)}_bias", names)
    scaled = (grouped * _per_column(a, w, group)).reshape(w.shape)
    set_const_input(graph, conv, 1, bm.cast_like(scaled, w), conv.inputs[1].name, names)


def _layout(v: np.ndarray, rank: int) -> np.ndarray:
    """A scalar when every channel's value is the same, else ``[C, 1, ...]`` (channels on axis 1)."""
    return np.asarray(v[0]) if np.all(v == v[0]) else v.reshape(-1, *([1] * (rank - 2)))


def _shift_before(graph: gs.Graph, names: UniqueNames, chain: _Chain, shift: np.ndarray) -> None:
    const = new_constant(graph, f"{chain.label}_shift", shift, names)
    graph.nodes.append(gs.Node("Add", names.fresh(f"{chain.label}_shift_add"), inputs=[chain.x, const],
                               outputs=[chain.out]))
