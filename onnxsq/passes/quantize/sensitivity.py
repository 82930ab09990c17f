"""Per-layer sensitivity: which layer's quantization costs the output the most, and the fewest layers to
keep float for a target output SQNR.

A layer's quantization is its weight and its output (the requantization point); the other quantized
tensors (graph inputs, constant operands, outputs of Add/Concat) are each their own unit. For every unit
``u`` the float model gets, on each of its tensors ``t``, a switch

    ``t' = t + m_u * (DQ(Q(t)) - t)``

with the unit's power-of-two parameters (a per-channel axis for weights; ``Max(Min(t, hi), lo)`` first
where the integer range is narrower than the carrier type's: fewer bits, or a weight's symmetric range),
and ``m_u`` a scalar graph input: 0 is exactly the float tensor, 1 exactly its fake-quantized value. One
session then runs any mix:

- **sensitivity of u**: output SQNR against float with only ``m_u = 1`` (dB; the lower, the more
  sensitive). The units are ranked by it.
- **keep float for a target** (``target_sqnr``): with every unit quantized, the ``k`` most sensitive
  units switched back to float, for the smallest ``k`` whose output SQNR reaches the target (found by
  doubling ``k``, then bisecting; sensitivities are not additive, so each ``k`` is measured, not summed).

The switch model computes each quantized tensor in float from float inputs, as the quantize pass's own
error measure does (:mod:`.eval`); it ranks layers, it is not the integer model. Biases stay float
(int32 at ``s_in * s_w``: their error is below the weights' by far). Costs one run per unit and sample
(sensitivity) plus ``2 log2(units)`` runs per sample (target).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...calibration import pow2
from ...calibration.collect import MISMATCH
from ...params import TensorQuant
from ...runtime import FedSession
from .insert import carrier_dtype
from .placement_plan import Plan

log = logging.getLogger(__name__)

MASK = "onnxsq_mask/"


@dataclass
class Sensitivity:
    """Output SQNR (dB) with each unit alone quantized, and what a target kept float."""

    alone: dict[str, float] = field(default_factory=dict)  # unit → output SQNR, that unit alone quantized
    full: float = float("nan")  # every unit quantized (the switch model)
    keep_float: list[str] = field(default_factory=list)  # the units a target keeps float (most sensitive first)
    reached: float | None = None  # output SQNR with those float


def units_of(plan: Plan, params: Mapping[str, TensorQuant]) -> dict[str, list[str]]:
    """Unit name → its quantized tensors: each quantized layer (label) with its weight and output, then
    every other quantized tensor on its own. Biases are not switched (they stay float here)."""
    units: dict[str, list[str]] = {}
    weights = {u.node: u.weight for u in plan.weights}
    taken: set[str] = set()
    for entry in plan.layers:
        if entry.action not in ("quantized", "shared") or entry.output is None:
            continue
        tensors = [t for t in (weights.get(entry.node), entry.output) if t in params and t not in taken]
        if tensors:
            units[entry.node] = tensors
            taken.update(tensors)
    for t in plan.activations + plan.constants + [u.weight for u in plan.weights]:
        if t in params and t not in taken:
            units[t] = [t]
            taken.add(t)
    return units


def _switch_nodes(t: str, p: TensorQuant, mask: str, rank: int | None) -> tuple[list, list, str]:
    """Nodes and constants computing ``t + mask * (DQ(Q(t)) - t)``; returns (nodes, initializers, output)."""
    base = f"onnxsq_sw/{t}"
    scale = p.scale
    carrier = carrier_dtype(p.bits, p.signed)
    axis = p.axis if p.per_channel else None
    inits = [numpy_helper.from_array(scale, f"{base}/scale"),
             numpy_helper.from_array(np.zeros(scale.shape, carrier), f"{base}/zp")]
    nodes, src = [], t
    qmin, qmax = pow2.int_range(p.bits, p.signed, symmetric=p.kind == "weight")
    info = np.iinfo(carrier)
    if (qmin, qmax) != (info.min, info.max):  # fewer bits than the carrier, or symmetric: clip as QDQ does
        shape = [1] * (rank or 1)
        if axis is not None and rank:
            shape[axis % rank] = scale.size
        lo = (qmin * scale.astype(np.float64)).astype(np.float32).reshape(shape if axis is not None else ())
        hi = (qmax * scale.astype(np.float64)).astype(np.float32).reshape(shape if axis is not None else ())
        inits += [numpy_helper.from_array(lo, f"{base}/lo"), numpy_helper.from_array(hi, f"{base}/hi")]
        nodes += [helper.make_node("Min", [t, f"{base}/hi"], [f"{base}/min"]),
                  helper.make_node("Max", [f"{base}/min", f"{base}/lo"], [f"{base}/clipped"])]
        src = f"{base}/clipped"
    kw = {"axis": axis} if axis is not None else {}
    nodes += [
        helper.make_node("QuantizeLinear", [src, f"{base}/scale", f"{base}/zp"], [f"{base}/q"], **kw),
        helper.make_node("DequantizeLinear", [f"{base}/q", f"{base}/scale", f"{base}/zp"], [f"{base}/dq"], **kw),
        helper.make_node("Sub", [f"{base}/dq", t], [f"{base}/err"]),
        helper.make_node("Mul", [f"{base}/err", mask], [f"{base}/merr"]),
        helper.make_node("Add", [t, f"{base}/merr"], [f"{base}/out"]),
    ]
    return nodes, inits, f"{base}/out"


def switch_model(float_model: onnx.ModelProto, params: Mapping[str, TensorQuant], units: Mapping[str, list[str]],
                 weights: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``float_model`` (a skeleton fed with ``weights``) with a switch on every unit's tensors; returns it
    and unit → its mask input."""
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    g = model.graph
    ranks = {k: v.ndim for k, v in weights.items()} | {t.name: len(t.dims) for t in g.initializer}
    masks, renamed, added = {}, {}, []
    for i, (unit, tensors) in enumerate(units.items()):
        masks[unit] = f"{MASK}{i}"
        g.input.append(helper.make_tensor_value_info(masks[unit], onnx.TensorProto.FLOAT, []))
        for t in tensors:
            nodes, inits, out = _switch_nodes(t, params[t], masks[unit], ranks.get(t))
            added += nodes
            g.initializer.extend(inits)
            renamed[t] = out
    for node in g.node:  # every reader of a switched tensor reads the switch
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    outputs = {o.name for o in g.output}
    for t in renamed.keys() & outputs:  # a switched graph output: an Identity keeps its name
        raise_output = f"onnxsq_sw/{t}/raw"
        for node in g.node:
            node.output[:] = [raise_output if o == t else o for o in node.output]
        for node in added:
            node.input[:] = [raise_output if x == t else x for x in node.input]
        added.append(helper.make_node("Identity", [renamed[t]], [t]))
    g.node.extend(added)
    return _topological(model), masks


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in an order where each input is produced before it is read (the switches were appended)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    todo, order = list(g.node), []
    while todo:
        rest = []
        for node in todo:
            (order.append(node) or ready.update(node.output)) if all(x in ready for x in node.input) \
                else rest.append(node)
        if len(rest) == len(todo):  # inputs from subgraph scopes or unknown: keep the remaining order
            order += rest
            break
        todo = rest
    del g.node[:]
    g.node.extend(order)
    return model


class _Runner:
    """Output SQNR of any on/off mix of the units over the samples (float outputs computed once)."""

    def __init__(self, model: onnx.ModelProto, weights: Mapping[str, np.ndarray], masks: dict[str, str],
                 feeds: list[dict[str, np.ndarray]]) -> None:
        self.session = FedSession(model.SerializeToString(), weights, mismatch=MISMATCH)
        self.masks, self.feeds = masks, feeds
        self.outputs = [o.name for o in model.graph.output]
        self.reference = self._run(set())

    def _run(self, on: set[str]) -> list[list[np.ndarray]]:
        m = {name: np.array(1.0 if unit in on else 0.0, np.float32) for unit, name in self.masks.items()}
        return [self.session.run(self.outputs, {**feed, **m}) for feed in self.feeds]

    def sqnr(self, on: set[str]) -> float:
        signal = noise = 0.0
        for ref, got in zip(self.reference, self._run(on)):
            for x, xq in zip(ref, got):
                x64 = np.asarray(x, np.float64)
                signal += float(np.square(x64).sum())
                noise += float(np.square(x64 - np.asarray(xq, np.float64)).sum())
        return round(pow2.sqnr_db(signal, noise), 2)


def measure(float_model: onnx.ModelProto, weights: Mapping[str, np.ndarray], plan: Plan,
            params: Mapping[str, TensorQuant], feeds: list[dict[str, np.ndarray]], *,
            target_sqnr: float | None = None, progress: Callable | None = None) -> Sensitivity:
    """Each unit's sensitivity on ``feeds`` and, with ``target_sqnr``, the layers to keep float (only
    layers: a layer can be excluded from quantization, a lone tensor cannot)."""
    units = units_of(plan, params)
    model, masks = switch_model(float_model, params, units, weights)
    runner = _Runner(model, weights, masks, feeds)
    result = Sensitivity()
    for i, unit in enumerate(units):
        result.alone[unit] = runner.sqnr({unit})
        if progress is not None:
            progress(i + 1, len(units), "sensitivity")
    every = set(units)
    result.full = runner.sqnr(every)
    if target_sqnr is not None and result.full < target_sqnr:
        layers = {e.node for e in plan.layers}
        ranked = sorted((u for u in units if u in layers), key=lambda u: result.alone[u])  # most sensitive first
        k, reached = _fewest(lambda n: runner.sqnr(every - set(ranked[:n])), len(ranked), target_sqnr)
        result.keep_float, result.reached = ranked[:k], reached
    elif target_sqnr is not None:
        result.reached = result.full
    log.info("sensitivity: %d units, all quantized %.2f dB, %d kept float", len(units), result.full,
             len(result.keep_float))
    return result


def _fewest(sqnr_with: Callable[[int], float], n: int, target: float) -> tuple[int, float]:
    """Smallest ``k`` in 0..n with ``sqnr_with(k) >= target`` (doubling, then bisecting), and its SQNR;
    ``n`` and its SQNR when even all of them do not reach it."""
    seen: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in seen:
            seen[k] = sqnr_with(k)
        return seen[k]

    hi = 1
    while hi < n and at(hi) < target:
        hi *= 2
    hi = min(hi, n)
    if at(hi) < target:
        return hi, at(hi)
    lo = hi // 2  # at(lo) < target (or lo = 0: nothing float, known below target)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid) >= target else (mid, hi)
    return hi, at(hi)
