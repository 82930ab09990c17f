"""``threshold``: zero the smallest-magnitude weights of each layer up to a target fraction.

The original tool's Stage 4 (``caffe threshold``), option for option, then a few improvements.

Math (per layer, or per output channel with ``channelwise``; details in :mod:`.threshold_search`):
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
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidOptionError
from ..model_io import ModelLike, load_model
from ..report import Report
from ..sparsity import WEIGHT_OPS, constant_tensors, node_label, standard_totals, weight_stats
from .fold_constants import fold_constants, merge_into
from .threshold_search import SEARCHES, ThresholdInfo, caps, pooled_threshold, threshold_array, threshold_rows

__all__ = ["ThresholdConfig", "ThresholdInfo", "layer_class", "threshold", "threshold_array", "weight_layout"]

log = logging.getLogger(__name__)

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class ThresholdConfig:
    """Options of :func:`threshold`. Defaults: the original's fractions and its manual's caps/step."""

    fraction_low: float = 0.40
    fraction_mid: float = 0.80
    fraction_high: float = 0.90
    value_max: float = 0.2
    value_maxratio: float = 0.2
    step_factor: float = 1e-6
    search: str = "exact"
    channelwise: bool = False
    layers: tuple[tuple[str, float], ...] = ()  # (glob on node or weight name, fraction); last match wins
    excludes: tuple[str, ...] = ()
    ops: frozenset[str] = field(default_factory=lambda: frozenset({"Conv"}))
    global_fraction: float | None = None

    def __post_init__(self) -> None:
        layers = self.layers.items() if isinstance(self.layers, dict) else self.layers
        object.__setattr__(self, "layers", tuple((str(p), float(f)) for p, f in layers))
        excludes = (self.excludes,) if isinstance(self.excludes, str) else self.excludes
        object.__setattr__(self, "excludes", tuple(str(p) for p in excludes))
        ops = self.ops.split(",") if isinstance(self.ops, str) else self.ops
        object.__setattr__(self, "ops", frozenset(o.strip() for o in ops if o.strip()))
        for name in ("fraction_low", "fraction_mid", "fraction_high"):
            _check_fraction(name, getattr(self, name))
        for pattern, fraction in self.layers:
            _check_fraction(f"layer override {pattern!r}", fraction)
        if self.global_fraction is not None:
            _check_fraction("global_fraction", self.global_fraction)
        for name in ("value_max", "value_maxratio"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and np.isfinite(value) and value >= 0):
                raise InvalidOptionError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.step_factor, numbers.Real) and np.isfinite(self.step_factor) and self.step_factor > 0):
            raise InvalidOptionError(f"step_factor must be a finite number > 0, got {self.step_factor!r}")
        if self.search not in SEARCHES:
            raise InvalidOptionError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        unknown = sorted(self.ops - set(WEIGHT_OPS))
        if unknown or not self.ops:
            raise InvalidOptionError(f"ops must be a non-empty subset of {','.join(WEIGHT_OPS)}, got "
                                     f"{','.join(sorted(self.ops)) or 'nothing'}")
        if self.global_fraction is not None and self.channelwise:
            raise InvalidOptionError("global_fraction and channelwise cannot be combined "
                                     "(one pooled threshold has no per-channel form)")
        if self.global_fraction is not None and self.search == "grid":
            raise InvalidOptionError("global_fraction needs search='exact' (the original's grid is per layer)")


def _check_fraction(name: str, value: Any) -> None:
    if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
        raise InvalidOptionError(f"{name} must be a fraction within [0, 1], got {value!r}")


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


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


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
    owner: dict[str, str] = {}
    used: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        label, op, wname = node_label(node), node.op_type, node.input[1]

        def skip(reason: str, label=label, op=op, wname=wname, **details: Any) -> None:
            order.append((label, op, reason, {"weight": wname, **details}))

        excluded = _match(cfg.excludes, label, wname)
        if excluded:
            used.add(f"exclude:{excluded}")
        if op not in cfg.ops:
            skip(f"{op} weights are not thresholded unless opted in (ops={','.join(sorted(cfg.ops))})"
                 + ("; the original never thresholded fully connected layers" if op in ("Gemm", "MatMul") else ""))
            continue
        if excluded:
            skip(f"excluded by pattern {excluded!r}")
            continue
        tensor = consts.get(wname)
        if tensor is None:
            skip("weight is not a constant (a graph input or computed, e.g. by DequantizeLinear)")
            continue
        if wname in owner:
            skip(f"weight shared with {owner[wname]}, thresholded there once")
            continue
        owner[wname] = label
        if tensor.data_type not in FLOAT_TYPES:
            skip(f"weight dtype {onnx.TensorProto.DataType.Name(tensor.data_type)} is not float (already quantized?)")
            continue
        shape = tuple(int(d) for d in tensor.dims)
        if len(shape) < (3 if op in ("Conv", "ConvTranspose") else 1) or (op == "Gemm" and len(shape) != 2):
            skip(f"unexpected weight rank {len(shape)} for {op}")
            continue
        layout = weight_layout(op, shape, _attr(node, "group", 1), _attr(node, "transB", 0))
        dims = {"ni": layout.ni, "no": layout.no}
        hits = [(p, f) for p, f in cfg.layers if any(fnmatch.fnmatchcase(n, p) for n in (label, wname))]
        used.update(f"layer:{p}" for p, _ in hits)
        if hits:
            override = hits[-1]  # the last matching pattern wins
            order.append(_Layer(node, label, tensor, shape, layout, "override", override[1],
                                f"fraction from layer pattern {override[0]!r}"))
            continue
        if layout.depthwise:
            skip("depthwise conv: each output channel has only a few weights, all of them significant "
                 "(the original skipped these too; a layer override still applies)", **dims)
            continue
        klass = layer_class(layout.ni, layout.no)
        if klass is None:
            skip("too small: needs ni >= 32 or no >= 32 (the original's rule)", **dims)
            continue
        if cfg.global_fraction is not None:
            order.append(_Layer(node, label, tensor, shape, layout, "global", cfg.global_fraction))
        else:
            order.append(_Layer(node, label, tensor, shape, layout, klass, getattr(cfg, f"fraction_{klass}")))
    return [x for x in order if isinstance(x, _Layer)], order, used


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
    for kind, patterns in (("layer", [p for p, _ in cfg.layers]), ("exclude", list(cfg.excludes))):
        for p in patterns:
            if f"{kind}:{p}" not in used:
                report.warnings.append(f"{kind} pattern {p!r} matched no {'/'.join(sorted(cfg.ops))} layer")
    done = [layer for layer in layers if layer.info is not None]
    if not done:
        report.warnings.append("no layer was thresholded (see the reasons per layer)")
    _summarize(report, cfg, done, before, standard_totals(model))
    return model, report


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
