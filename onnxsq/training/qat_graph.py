"""The quantization-aware training graph: fake quantizers where ``onnxsq quantize`` puts QDQ pairs.

Placement is the quantize pass's own (:func:`onnxsq.passes.quantize.placement.plan_qdq`, run on the same
BN-folded model), so the trained forward pass and the exported QDQ model quantize the same tensors:

* every planned activation ``t`` (after a fused Relu/Clip; Add outputs; the inputs of compute layers;
  pooling/reshape outputs sharing their input's scale): its producer writes ``t/qat_float`` and
  ``FakeQuant(t/qat_float) → t``, so every reader (and a graph output) reads the quantized value;
  a graph input is quantized into a new tensor its readers move to;
* every planned weight: ``FakeQuant(W) → W/qat`` read by the layer instead of ``W``, symmetric signed;
* constant Add/Concat operands: like weights, with their group's scale.

``com.microsoft`` ``FakeQuant(x, scale, zero_point)`` computes
``(clip(round_half_even(x / scale) + zp, quant_min, quant_max) - zp) * scale`` and has a straight-through
gradient (1 inside the range, 0 where it clips). With ``scale = 2**-shift`` the division is exact, so it
equals ``DequantizeLinear(QuantizeLinear(x))`` — with the narrower-range ``Clip`` that ``insert_qdq``
writes for fewer than 8 bits — bit for bit. Scales are frozen parameters (``qat/scale/<group root or
weight>``), one per shared-scale group (Concat, pooling: the same tensor as the quantize pass's
group), rewritten in the checkpoint state as training moves the ranges; the zero point is 0.
Signedness (the integer range, an attribute) is fixed when the graph is built. FakeQuant is per
tensor only, so QAT quantizes weights per tensor.

* every planned bias: ``FakeQuant(b) → b/qat`` in int32 at ``scale_in * scale_w`` (``bias/<name>``), as
  the export stores it: with few weight bits that step is coarse enough to move outputs by a step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..calibration import pow2
from ..graph import UniqueNames, const_value, data_inputs, import_graph
from ..passes.quantize.placement import plan_qdq
from ..passes.quantize.placement_plan import Plan
from .artifacts import TrainingGraph

ZERO_POINT = "qat/zero_point"
MS_DOMAIN = "com.microsoft"


def scale_name(key: str) -> str:
    return f"qat/scale/{key}"


def bias_key(bias: str) -> str:
    return f"bias/{bias}"


@dataclass
class QATPlan:
    """The quantize pass's plan for a model, plus what QAT needs to know about its tensors."""

    plan: Plan
    consts: dict[str, np.ndarray]  # values of the planned weights and constant operands
    graph_inputs: set[str]

    @property
    def weights(self) -> list[str]:
        return list(dict.fromkeys(u.weight for u in self.plan.weights))

    @property
    def produced(self) -> list[str]:
        """Planned activations computed inside the graph (not graph inputs)."""
        return [a for a in self.plan.activations if a not in self.graph_inputs]


def plan_for(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> QATPlan:
    """Run the quantize pass's placement on ``model`` (per-tensor: FakeQuant has no axis)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = import_graph(inferred)
    plan = plan_qdq(graph, per_channel=False, exclude=tuple(exclude))
    wanted = {u.weight for u in plan.weights} | {u.bias for u in plan.weights if u.bias} | set(plan.constants)
    tensors = graph.tensors()
    consts = {n: np.asarray(const_value(tensors[n])) for n in wanted if n in tensors}
    inputs = {vi.name for vi in data_inputs(model)}
    return QATPlan(plan, consts, inputs)


def with_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with inferred value_info: onnxblock needs it for every extra output it returns."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to typed, shapeless value_info below
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out


def _value_info(vi: Mapping[str, onnx.ValueInfoProto], src: str, name: str) -> onnx.ValueInfoProto:
    if src in vi:
        new = onnx.ValueInfoProto()
        new.CopyFrom(vi[src])
        new.name = name
        return new
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def float_graph(graph: TrainingGraph) -> TrainingGraph:
    """The float training graph with value_info (to return the activations it observes)."""
    return dataclasses.replace(graph, model=with_value_info(graph.model))


class _FakeQuants:
    """The FakeQuant nodes added to a training model: their scale parameters, the nodes that run first
    (on weights, biases, constants and graph inputs), the inputs they redirect and their value_info."""

    def __init__(self, tm: onnx.ModelProto) -> None:
        self.namer = UniqueNames(tm)
        self.inits = {i.name for i in tm.graph.initializer}
        self.scales: dict[str, None] = {}
        self.head: list[onnx.NodeProto] = []
        self.redirect: dict[str, str] = {}
        self.infos: list[onnx.ValueInfoProto] = []

    def node(self, src: str, out: str, key: str, qrange: tuple[int, int]) -> onnx.NodeProto:
        """``out = FakeQuant(src)`` with the scale parameter of ``key`` (one per group or tensor)."""
        self.scales.setdefault(scale_name(key), None)
        return helper.make_node("FakeQuant", [src, scale_name(key), ZERO_POINT],
                                [out, self.namer(f"{out}/qat_mask")], name=self.namer(f"{out}/FakeQuant"),
                                domain=MS_DOMAIN, quant_min=int(qrange[0]), quant_max=int(qrange[1]))

    def before(self, name: str, key: str, qrange: tuple[int, int], info: Any) -> None:
        """Quantize ``name`` before anything reads it (its readers read the quantized copy)."""
        out = self.namer(f"{name}/qat")
        self.head.append(self.node(name, out, key, qrange))
        self.redirect[name] = out
        self.infos.append(info(out))


def qat_graph(graph: TrainingGraph, qp: QATPlan, signed: Mapping[str, bool], bits: int,
              weight_bits: int) -> tuple[TrainingGraph, dict[str, str], list[str]]:
    """The training graph with fake quantizers.

    ``signed``: group root → signed. Returns ``(graph, observed, scales)``: ``observed`` maps each
    produced activation to the tensor holding its value before quantization (returned as an extra
    output, for the range statistics); ``scales`` are the new frozen scale parameters.
    """
    plan = qp.plan
    tm = with_value_info(graph.model)
    vi = {v.name: v for v in (*tm.graph.value_info, *tm.graph.input, *tm.graph.output)}
    fq = _FakeQuants(tm)

    def act_range(t: str) -> tuple[int, int]:
        return pow2.int_range(bits, signed[plan.groups[t]])

    def const_info(name: str) -> Any:
        return lambda out: helper.make_tensor_value_info(out, TensorProto.FLOAT, list(qp.consts[name].shape))

    for w in qp.weights:
        if w in fq.inits:  # else a Constant-node weight: trained as it is, quantized at export
            fq.before(w, w, pow2.int_range(weight_bits, True, symmetric=True), const_info(w))
    for use in plan.weights:
        b = use.bias
        if b is not None and b in fq.inits and b not in fq.redirect:  # a cloned shared bias is not in this graph
            fq.before(b, bias_key(b), pow2.int_range(pow2.BIAS_BITS, True), const_info(b))
    for c in plan.constants:
        if c in fq.inits and c not in fq.redirect:
            fq.before(c, plan.groups[c], act_range(c), const_info(c))
    for a in plan.activations:
        if a in qp.graph_inputs:
            fq.before(a, plan.groups[a], act_range(a), lambda out, a=a: _value_info(vi, a, out))
    observed = _quantize_outputs(tm, fq, set(qp.produced), vi, lambda name: (plan.groups[name], act_range(name)))
    tm.graph.value_info.extend(fq.infos)
    tm.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), ZERO_POINT))
    for s in fq.scales:
        tm.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), s))
    if not any(o.domain == MS_DOMAIN for o in tm.opset_import):
        tm.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    frozen = list(graph.frozen) + [ZERO_POINT, *fq.scales]
    return dataclasses.replace(graph, model=tm, frozen=frozen), observed, list(fq.scales)


def _quantize_outputs(tm: onnx.ModelProto, fq: _FakeQuants, produced: set[str], vi: Mapping[str, Any],
                      key_range: Any) -> dict[str, str]:
    """Rewrite the node list: the head first, inputs redirected, and every produced activation computed
    under a ``/qat_float`` name then fake-quantized under its own; returns activation → float tensor."""
    observed: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = list(fq.head)
    for node in tm.graph.node:
        for i, name in enumerate(node.input):
            if name in fq.redirect:
                node.input[i] = fq.redirect[name]
        after = []
        for i, name in enumerate(node.output):
            if name in produced and name not in observed:
                src = fq.namer(f"{name}/qat_float")
                node.output[i] = src
                fq.infos.append(_value_info(vi, name, src))
                observed[name] = src
                after.append(fq.node(src, name, *key_range(name)))
        nodes.append(node)
        nodes.extend(after)
    del tm.graph.node[:]
    tm.graph.node.extend(nodes)
    return observed
