"""The student of label-free fine-tuning: the post-training-quantized model as a trainable graph.

The graph is the float model the quantize pass quantized (BatchNorm folded, equalized), with a fake
quantizer wherever that pass put a QDQ pair (:func:`onnxsq.passes.quantize.placement.plan_qdq`'s plan,
the very one it used) and at the shift it chose (:class:`~onnxsq.params.TensorQuant`), so the forward pass
computes what the QDQ model computes:

* an activation ``t``: ``FakeQuant(t, 2**-shift)`` with the integer range of its bits and signedness;
* a weight ``W`` with per-channel shifts ``s_c``: ``FakeQuant(W * 2**s_c, 1) * 2**-s_c``. ``com.microsoft``
  ``FakeQuant`` takes one scale per tensor; multiplying by a power of two is exact, so this is
  ``DequantizeLinear(QuantizeLinear(W))`` per channel, bit for bit, and the straight-through gradient
  reaches ``W`` scaled by ``2**s_c * 2**-s_c = 1`` (zero where a value clips);
* constant Add/Concat operands like activations (their group's shift).

* a bias: the same, in int32 at ``scale_in * scale_w`` (its shifts ``s_in + s_w``), as the export stores it.

The shifts are fixed (frozen parameters): only weights and biases train.

The loss (:func:`teacher_loss`): the mean squared error of every output against the float model's
output (the teacher's, fed as ``teacher/<k>``), each divided by that output's mean square on the
training samples, summed: the normalized error whose ``-10 log10`` is the output SQNR. Optionally a few
intermediate layer outputs join as outputs (feature distillation), together weighted as one output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..calibration import pow2
from ..params import TensorQuant
from ..passes.quantize.placement_plan import Plan
from .artifacts import TrainingGraph
from .qat_graph import MS_DOMAIN, ZERO_POINT, _FakeQuants, _quantize_outputs, _value_info, scale_name, with_value_info

UNIT = "ft_unit"  # the key of the per-tensor FakeQuant scale (1) of a weight brought to integer units first
TEACHER = "teacher"


def teacher_name(k: int) -> str:
    return f"{TEACHER}/{k}"


def _weight_fq(fq: _FakeQuants, w: str, p: TensorQuant, shape: Sequence[int], consts: list[onnx.TensorProto],
               qrange: tuple[int, int]) -> None:
    """``W/qat = FakeQuant(W * up, 1) * down`` before every reader of ``W`` (``up = 2**shift`` per channel)."""
    shift = pow2.expand_shape(p.shift_array, len(shape), p.axis if p.per_channel else None)
    up, down = fq.namer(f"ft/up/{w}"), fq.namer(f"ft/down/{w}")
    consts += [numpy_helper.from_array(np.ldexp(np.ones(np.shape(shift), np.float32), shift.astype(np.int32)), up),
               numpy_helper.from_array(np.ldexp(np.ones(np.shape(shift), np.float32), -shift.astype(np.int32)), down)]
    scaled, q, out = fq.namer(f"{w}/ft_int"), fq.namer(f"{w}/ft_q"), fq.namer(f"{w}/qat")
    fq.head.append(helper.make_node("Mul", [w, up], [scaled], name=fq.namer(f"{w}/ft_up")))
    fq.head.append(fq.node(scaled, q, UNIT, qrange))
    fq.head.append(helper.make_node("Mul", [q, down], [out], name=fq.namer(f"{w}/ft_down")))
    fq.redirect[w] = out
    for name in (scaled, q, out):
        fq.infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))


def fix_input_shape(model: onnx.ModelProto, name: str, shape: Sequence[int] | None, ranks: Sequence[int]) -> None:
    """Declare the input ``name`` with the samples' ``shape`` (the batch axis left symbolic; None: as it is),
    every output with the rank the teacher's arrays have (``ranks``) and unknown dims but the first, and drop
    the inferred value_info, in place: shape inference then gives every tensor its size. onnxruntime's
    gradient builder trusts declared dims: a ``-1`` some exporters write, or one ``unk__3`` that two runs of
    shape inference gave to different sizes, makes broadcast gradients fail; the teacher inputs take the
    outputs' declared rank, which some exporters write wrong (ddddocr: rank 2 for a rank-3 output)."""
    g = model.graph
    del g.value_info[:]
    for vi in g.input:
        if vi.name == name and shape is not None:
            dims = vi.type.tensor_type.shape.dim
            for d, n in zip(list(dims)[1:], shape[1:]):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    for vi, rank in zip(g.output, ranks):
        tt = vi.type.tensor_type
        first = tt.shape.dim[0] if len(tt.shape.dim) else None
        keep = onnx.TensorShapeProto.Dimension()
        if first is not None:
            keep.CopyFrom(first)
        tt.ClearField("shape")
        for k in range(rank):
            d = tt.shape.dim.add()
            if k == 0:
                d.CopyFrom(keep)


def student_graph(graph: TrainingGraph, plan: Plan, tparams: Mapping[str, TensorQuant],
                  graph_inputs: set[str], features: Sequence[str] = ()) -> tuple[TrainingGraph, list[str]]:
    """``graph`` with fake quantizers at ``tparams``' shifts (and the tensors ``features`` as outputs after
    its own, for the loss); returns it and the planned tensors it could not quantize in training (a
    Constant-node weight, a tensor a training rewrite removed)."""
    tm = with_value_info(graph.model)
    vi = {v.name: v for v in (*tm.graph.value_info, *tm.graph.input, *tm.graph.output)}
    fq = _FakeQuants(tm)
    shapes = {i.name: list(i.dims) for i in tm.graph.initializer}
    consts: list[onnx.TensorProto] = []
    scales: dict[str, float] = {}
    missing: list[str] = []

    def act_range(t: str) -> tuple[int, int]:
        scales[t] = pow2.scale_of(int(tparams[t].shift))
        return pow2.int_range(tparams[t].bits, tparams[t].signed)

    for w in dict.fromkeys(u.weight for u in plan.weights if u.weight in tparams):  # absent: kept float
        if w in fq.inits:
            _weight_fq(fq, w, tparams[w], shapes[w], consts, pow2.int_range(tparams[w].bits, True, symmetric=True))
        else:
            missing.append(w)
    for b in dict.fromkeys(u.bias for u in plan.weights if u.bias in tparams):  # int32 at scale_in * scale_w
        if b in fq.inits and b not in fq.redirect:
            _weight_fq(fq, b, tparams[b], shapes[b], consts, pow2.int_range(pow2.BIAS_BITS, True))
    for c in (c for c in plan.constants if c in tparams):
        if c in fq.inits and c not in fq.redirect:
            fq.before(c, c, act_range(c), lambda out, c=c: helper.make_tensor_value_info(
                out, TensorProto.FLOAT, shapes[c]))
    acts = [a for a in plan.activations if a in tparams]
    for a in acts:
        if a in graph_inputs:
            fq.before(a, a, act_range(a), lambda out, a=a: _value_info(vi, a, out))
    produced = {a for a in acts if a not in graph_inputs}
    observed = _quantize_outputs(tm, fq, produced, vi, lambda name: (name, act_range(name)))
    missing += sorted(produced - set(observed))
    tm.graph.value_info.extend(fq.infos)
    _add_outputs(tm, features)
    tm.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), ZERO_POINT))
    scales[UNIT] = 1.0
    for s in fq.scales:
        key = s[len(scale_name("")):]
        tm.graph.initializer.append(numpy_helper.from_array(np.array(scales[key], np.float32), s))
    tm.graph.initializer.extend(consts)
    if not any(o.domain == MS_DOMAIN for o in tm.opset_import):
        tm.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    frozen = [*graph.frozen, ZERO_POINT, *fq.scales, *(c.name for c in consts)]
    return dataclasses.replace(graph, model=tm, frozen=frozen), missing


def _add_outputs(tm: onnx.ModelProto, names: Sequence[str]) -> None:
    """Make the tensors ``names`` graph outputs too (their value_info moves there)."""
    infos = {v.name: v for v in tm.graph.value_info}
    for name in names:
        vi = infos.get(name) or helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        tm.graph.output.append(vi)
    keep = [v for v in tm.graph.value_info if v.name not in set(names)]
    del tm.graph.value_info[:]
    tm.graph.value_info.extend(keep)


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (the teacher's features)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return out


def output_weights(targets: Sequence[Sequence[np.ndarray]], features: int = 0) -> list[float]:
    """Per output, ``1 / sqrt(mean square)`` of the teacher's values (``targets[sample][output]``); the last
    ``features`` of them (intermediate tensors) share one output's weight between them."""
    out = []
    n = len(targets[0])
    for k in range(n):
        power = float(np.mean([np.mean(np.square(t[k], dtype=np.float64)) for t in targets]))
        share = 1.0 / math.sqrt(features) if k >= n - features else 1.0
        out.append(share / math.sqrt(power) if power > 0 else share)
    return out


def teacher_loss(weights: Sequence[float]):
    """An onnxblock: ``sum_k mean(((y_k - t_k) * weights[k])**2)`` over the model's outputs, every term
    rank 0 (a rank-0 + shape-[1] sum breaks onnxruntime's gradient builder)."""
    from onnxruntime.training import onnxblock
    from onnxruntime.training.onnxblock import blocks

    class TeacherMSE(onnxblock.Block):
        def build(self, *outputs: str):
            total = None
            for k, (name, wk) in enumerate(zip(outputs, weights)):
                target = blocks.InputLike(name)(teacher_name(k))
                diff = blocks.Mul()(blocks.Sub()(name, target), blocks.Constant(float(wk))())
                term = blocks.ReduceMean(keepdims=False)(blocks.Pow(2.0)(diff))
                total = term if total is None else blocks.Add()(total, term)
            return total

    return TeacherMSE()


def teacher_loss_numpy(outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], weights: Sequence[float]) -> float:
    """What :func:`teacher_loss` computes, in numpy (float64)."""
    return float(sum(np.mean(np.square((np.asarray(y, np.float64) - t) * w))
                     for y, t, w in zip(outputs, targets, weights)))
