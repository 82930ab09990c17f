"""``threshold``: zero the smallest-magnitude weights of each layer up to a target fraction.

The original tool's Stage 4 (``caffe threshold``), option for option, then a few improvements.

Math (per layer, or per output channel with ``channelwise``; details in :mod:`.search`):
``no`` = output channels, ``ni`` = input channels × group. A layer is eligible when ``ni >= 32 or
no >= 32``; its fraction class is *high* when ``ni >= 256 and no >= 512``, *mid* when ``ni >= 32 and
no >= 32``, *low* otherwise. The cap ``min(value_max, value_maxratio * max|W|)`` protects large
weights: nothing at or above it is zeroed. The threshold ``t`` is the largest one whose zero fraction
(``|w| <= t``, inclusive) does not exceed the class fraction: exactly (one partial sort, the default)
or on the original's coarse/fine grid (``search="grid"``). Both numbers are reported per layer.
``global_fraction`` instead pools all eligible layers and picks one magnitude threshold for the pool
(caps still hold), which keeps the big, redundant layers sparse and the small ones dense.

Handled: Conv weights (default); ConvTranspose, Gemm and MatMul weights when opted in through
``ops``; weights in initializers or ``Constant`` nodes; float16/32/64 (dtype kept); a weight shared by
several nodes (thresholded once); per-layer fractions by glob (``layers``), exclusions (``excludes``).
Refused, each with a reason in the report: depthwise convs (every weight of their tiny kernels matters;
the original skipped them too — a ``layers`` override still applies), layers below the size rule,
non-constant or non-float weights (e.g. already quantized), weights holding NaN/inf, weights of ops not
selected. Only the top-level graph is read. Weights are rewritten in place on a copy of the model, so
nothing else in it changes (IR version, opsets, names, other tensors' bytes).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import InvalidOptionError
from ...graph import attr, constant_tensors, node_label
from ...model_io import ModelLike, load_model
from ...report import Report
from ...sparsity import WEIGHT_OPS, standard_totals, weight_stats
from ..fold_constants import fold_constants, merge_into
from .config import ThresholdConfig
from .search import ThresholdInfo, caps, pooled_threshold, threshold_array, threshold_rows

__all__ = ["ThresholdConfig", "ThresholdInfo", "layer_class", "threshold", "threshold_array", "weight_layout"]

log = logging.getLogger(__name__)

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def layer_class(ni: int, no: int) -> str | None:
    """The original's fraction class of a layer, or None when it is too small to threshold."""
    if not (ni >= 32 or no >= 32):
        return None
    if ni >= 256 and no >= 512:
        return "high"
    return "mid" if ni >= 32 and no >= 32 else "low"


@dataclass(frozen=True)
class WeightLayout:
    """How a weight tensor maps to channels: ``to_rows`` gives (output channels × rest)."""

    ni: int
    no: int
    depthwise: bool
    to_rows: Callable[[np.ndarray], np.ndarray]
    from_rows: Callable[[np.ndarray], np.ndarray]


def weight_layout(op: str, shape: tuple[int, ...], group: int = 1, trans_b: int = 0) -> WeightLayout:
    """ni/no and the output-channel view of a Conv/ConvTranspose/Gemm/MatMul weight of ``shape``."""
    if op == "Conv":
        no, ni = shape[0], shape[1] * group
        return WeightLayout(ni, no, group > 1 and shape[1] == 1, lambda w: w.reshape(no, -1),
                            lambda r: r.reshape(shape))
    if op == "ConvTranspose":  # [C_in, C_out/group, k...]; output channel g*(C_out/group)+m
        ni, per, rest = shape[0], shape[1], shape[2:]
        split = (group, ni // group, per, *rest)

        def to_rows(w: np.ndarray) -> np.ndarray:
            return np.swapaxes(w.reshape(split), 1, 2).reshape(group * per, -1)

        def from_rows(r: np.ndarray) -> np.ndarray:
            return np.swapaxes(r.reshape(group, per, ni // group, *rest), 1, 2).reshape(shape)

        return WeightLayout(ni, per * group, group > 1 and ni // group == 1, to_rows, from_rows)
    if op == "Gemm" and trans_b:
        return WeightLayout(shape[1], shape[0], False, lambda w: w, lambda r: r)
    if op in ("Gemm", "MatMul") and len(shape) >= 2:
        ni, no = shape[-2], shape[-1]
        return WeightLayout(ni, no, False, lambda w: np.moveaxis(w, -1, 0).reshape(no, -1),
                            lambda r: np.moveaxis(r.reshape(no, *shape[:-1]), 0, -1))
    n = int(np.prod(shape))
    return WeightLayout(n, 1, False, lambda w: w.reshape(1, -1), lambda r: r.reshape(shape))


@dataclass
class _Layer:
    node: onnx.NodeProto
    label: str
    tensor: onnx.TensorProto
    shape: tuple[int, ...]
    layout: WeightLayout
    klass: str  # low/mid/high, "override" or "global"
    fraction: float
    note: str = ""
    info: ThresholdInfo | None = None
    values: np.ndarray | None = None  # loaded when processed, dropped once written back
    new: np.ndarray | None = None

    def load(self) -> str:
        """Load the weight values; a skip reason when they cannot be thresholded."""
        if self.values is None:
            self.values = numpy_helper.to_array(self.tensor)
        return "" if np.all(np.isfinite(self.values)) else "weight holds NaN or inf values"


def _match(patterns: tuple[str, ...], *names: str) -> str | None:
    return next((p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)), None)


def _plan(model: onnx.ModelProto, cfg: ThresholdConfig) -> tuple[list[_Layer], list, set[str]]:
    """Decide per weighted node: a layer to threshold, or a skip reason (in graph order)."""
    consts = constant_tensors(model)
    order: list = []  # _Layer or (label, op, reason, details)
    owner: dict[str, str] = {}  # weight name -> the layer that thresholds it
    used: set[str] = set()  # "layer:PATTERN" / "exclude:PATTERN" that matched something
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        label, wname = node_label(node), node.input[1]
        decided = _decide(node, label, cfg, consts, owner, used)
        if isinstance(decided, _Layer):
            order.append(decided)
        else:
            reason, details = decided
            order.append((label, node.op_type, reason, {"weight": wname, **details}))
    return [x for x in order if isinstance(x, _Layer)], order, used


def _decide(node: onnx.NodeProto, label: str, cfg: ThresholdConfig, consts: dict[str, onnx.TensorProto],
            owner: dict[str, str], used: set[str]) -> _Layer | tuple[str, dict[str, Any]]:
    """One weighted node: the layer to threshold, or (why not, details)."""
    op, wname = node.op_type, node.input[1]
    excluded = _match(cfg.excludes, label, wname)
    if excluded:
        used.add(f"exclude:{excluded}")
    if op not in cfg.ops:
        return (f"{op} weights are not thresholded unless opted in (ops={','.join(sorted(cfg.ops))})"
                + ("; the original never thresholded fully connected layers" if op in ("Gemm", "MatMul") else ""),
                {})
    if excluded:
        return f"excluded by pattern {excluded!r}", {}
    tensor = consts.get(wname)
    if tensor is None:
        return "weight is not a constant (a graph input or computed, e.g. by DequantizeLinear)", {}
    if wname in owner:
        return f"weight shared with {owner[wname]}, thresholded there once", {}
    owner[wname] = label
    if tensor.data_type not in FLOAT_TYPES:
        return f"weight dtype {onnx.TensorProto.DataType.Name(tensor.data_type)} is not float (already quantized?)", {}
    shape = tuple(int(d) for d in tensor.dims)
    if len(shape) < (3 if op in ("Conv", "ConvTranspose") else 1) or (op == "Gemm" and len(shape) != 2):
        return f"unexpected weight rank {len(shape)} for {op}", {}
    layout = weight_layout(op, shape, int(attr(node, "group", 1)), int(attr(node, "transB", 0)))
    dims = {"ni": layout.ni, "no": layout.no}
    hits = [(p, f) for p, f in cfg.layers if any(fnmatch.fnmatchcase(n, p) for n in (label, wname))]
    used.update(f"layer:{p}" for p, _ in hits)
    if hits:
        pattern, fraction = hits[-1]  # the last matching pattern wins
        return _Layer(node, label, tensor, shape, layout, "override", fraction,
                      f"fraction from layer pattern {pattern!r}")
    if layout.depthwise:
        return ("depthwise conv: each output channel has only a few weights, all of them significant "
                "(the original skipped these too; a layer override still applies)", dims)
    klass = layer_class(layout.ni, layout.no)
    if klass is None:
        return "too small: needs ni >= 32 or no >= 32 (the original's rule)", dims
    if cfg.global_fraction is not None:
        return _Layer(node, label, tensor, shape, layout, "global", cfg.global_fraction)
    return _Layer(node, label, tensor, shape, layout, klass, getattr(cfg, f"fraction_{klass}"))


def _threshold_layer(layer: _Layer, cfg: ThresholdConfig) -> None:
    rows = layer.layout.to_rows(layer.values) if cfg.channelwise else layer.values.reshape(1, -1)
    new, layer.info = threshold_rows(rows, layer.fraction, value_max=cfg.value_max,
                                     value_maxratio=cfg.value_maxratio, search=cfg.search,
                                     step_factor=cfg.step_factor)
    layer.new = layer.layout.from_rows(new) if cfg.channelwise else new.reshape(layer.shape)


def _global_caps(layers: list[_Layer], cfg: ThresholdConfig) -> tuple[float, list[float]]:
    """The pooled threshold and each pooled layer's cap."""
    layer_caps = [float(caps(max(float(v.max()), -float(v.min())) if v.size else 0.0, cfg.value_max,
                             cfg.value_maxratio)) for v in (layer.values for layer in layers)]
    return pooled_threshold([layer.values for layer in layers], layer_caps, cfg.global_fraction), layer_caps


def _apply_global(layer: _Layer, t: float, cap: float) -> None:
    a, w = np.abs(layer.values), layer.values
    kill = (a <= np.float64(t)) & (a < np.float64(cap)) & (w != 0)
    before = int(w.size - np.count_nonzero(w))
    layer.new = np.where(kill, np.zeros((), w.dtype), w)
    zeroed = a[kill]
    layer.info = ThresholdInfo(max_abs=np.array([float(a.max()) if a.size else 0.0]), cap=np.array([cap]),
                               threshold_exact=np.array([t]), threshold_grid=np.array([np.nan]),
                               threshold=np.array([float(zeroed.max()) if zeroed.size else 0.0]),
                               zeros_before=before, zeros_after=before + int(np.count_nonzero(kill)),
                               size=int(a.size), search="exact", channelwise=False)


def _details(layer: _Layer, channelwise: bool) -> dict[str, Any]:
    info = layer.info
    assert info is not None

    def agg(x: np.ndarray) -> float | None:  # channelwise: the median over channels
        x = np.asarray(x, np.float64)
        if np.all(np.isnan(x)):
            return None
        return float(np.median(x)) if channelwise else float(x[0])

    return {"weight": layer.tensor.name, "shape": list(layer.shape), "ni": layer.layout.ni,
            "no": layer.layout.no, "class": layer.klass, "fraction": layer.fraction,
            "max_abs": float(info.max_abs.max()), "cap": agg(info.cap), "threshold": agg(info.threshold),
            "threshold_exact": agg(info.threshold_exact), "threshold_grid": agg(info.threshold_grid),
            "zeros_before": info.fraction_before, "zeros_after": info.fraction_after, "params": info.size}


def _write_back(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    fresh = numpy_helper.from_array(np.require(values, requirements="C"), tensor.name)
    doc = tensor.doc_string
    tensor.CopyFrom(fresh)
    tensor.doc_string = doc


def threshold(
    model: ModelLike, *, config: ThresholdConfig | None = None, **overrides: Any
) -> tuple[onnx.ModelProto, Report]:
    """Threshold the model's layer weights; returns (new model, report). The input is not modified.

    ``overrides`` replace fields of ``config`` (e.g. ``threshold(m, channelwise=True)``).
    """
    cfg = config or ThresholdConfig()
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ThresholdConfig)})
        if unknown:
            raise InvalidOptionError(f"unknown threshold option(s): {', '.join(unknown)}")
        cfg = dataclasses.replace(cfg, **overrides)
    # a ModelProto is only deep-copied: onnx.checker on a large model costs more than the pass, and
    # save_model checks the result anyway; a path is read and checked as usual
    model = load_model(model, check=not isinstance(model, onnx.ModelProto))
    report = Report("threshold")
    # weights computed in the graph (ConstantOfShape, Unsqueeze of constants) become weights first
    model, folded = fold_constants(model)
    merge_into(report, folded)
    before = standard_totals(model, weight_stats(model))
    layers, order, used = _plan(model, cfg)
    bad = {id(layer): reason for layer in layers if layer.klass == "global" for reason in [layer.load()] if reason}
    pooled = [layer for layer in layers if layer.klass == "global" and id(layer) not in bad]
    if pooled:
        t, layer_caps = _global_caps(pooled, cfg)
        report.summary["global threshold"] = t
        global_cap = {id(layer): cap for layer, cap in zip(pooled, layer_caps)}
    for item in order:
        if not isinstance(item, _Layer):
            report.add(item[0], item[1], "skipped", item[2], **item[3])
            continue
        # one layer at a time, written back at once: peak memory stays near one layer's temporaries
        reason = bad.get(id(item)) or item.load()
        if reason:
            report.add(item.label, item.node.op_type, "skipped", reason, weight=item.tensor.name)
            item.values = None
            continue
        if item.klass == "global":
            _apply_global(item, t, global_cap[id(item)])
        else:
            _threshold_layer(item, cfg)
        info = item.info
        changed = info.zeros_after > info.zeros_before
        if changed:
            _write_back(item.tensor, item.new)
        note = item.note or ("" if changed else "no weight below the threshold and the cap")
        if cfg.channelwise and item.klass != "global":
            note = "; ".join(filter(None, [note, f"thresholds are medians over {info.threshold.size} channels"]))
        report.add(item.label, item.node.op_type, "thresholded", note, **_details(item, cfg.channelwise))
        log.debug("%s: %.4f -> %.4f zero", item.label, info.fraction_before, info.fraction_after)
        item.values = item.new = None  # the tensor proto now holds the result
    report.warnings.extend(_unused_patterns(cfg, used))
    done = [layer for layer in layers if layer.info is not None]
    if not done:
        report.warnings.append("no layer was thresholded (see the reasons per layer)")
    _summarize(report, cfg, done, before, standard_totals(model))
    return model, report


def _unused_patterns(cfg: ThresholdConfig, used: set[str]) -> list[str]:
    """A warning per ``layer``/``exclude`` pattern that matched no layer (a typo leaves a layer unchanged)."""
    return [f"{kind} pattern {p!r} matched no {'/'.join(sorted(cfg.ops))} layer"
            for kind, patterns in (("layer", [p for p, _ in cfg.layers]), ("exclude", list(cfg.excludes)))
            for p in patterns if f"{kind}:{p}" not in used]


def _summarize(report: Report, cfg: ThresholdConfig, layers: list[_Layer], before: list, after: list) -> None:
    mode = (f"global fraction {cfg.global_fraction}" if cfg.global_fraction is not None
            else f"{cfg.search} search, {'channelwise' if cfg.channelwise else 'layerwise'}")
    zb = sum(layer.info.zeros_before for layer in layers)
    za = sum(layer.info.zeros_after for layer in layers)
    n = sum(layer.info.size for layer in layers)
    s = report.summary
    s["mode"] = mode
    s["layers thresholded"] = len(layers)
    s["layers skipped"] = len(report.skipped())

    def line(b: float, a: float, zeros: int, params: int, tensors: int) -> str:
        return f"{100 * b:.2f}% -> {100 * a:.2f}% zero ({zeros:,} of {params:,}; {tensors} tensors)"

    s["thresholded weights"] = line(zb / n if n else 0.0, za / n if n else 0.0, za, n, len(layers))
    for tb, ta in zip(before, after):
        s[ta.label] = line(tb.zero_fraction, ta.zero_fraction, ta.zeros, ta.params, ta.tensors)
    s["zero_fraction"] = za / n if n else 0.0
