"""A Conv reading a quantized graph input of C channels, C not a multiple of 4 (the RGB stem of every image
net), reads it zero-padded to the next multiple of 4, with zero weights for the new channels.

The math: ``conv(x, W) = conv([x, 0], [W, 0])`` — each output sums ``x[c] · W[o, c]`` over the input channels,
and the added channels add ``0 · 0 = 0`` exactly, in integers as in float. The padded input is written after
the input's DequantizeLinear as ``DQ(x) → Pad(0) → QuantizeLinear → DequantizeLinear → Conv`` at the input's
own scale and zero point: the Pad puts exact zeros beside the dequantized codes, the QuantizeLinear gives the
same codes back (and the zero point for the zeros), so the layer reads the same integers plus zero channels,
and its output — every accumulator, every rounding — is unchanged. The weight stays stored as it was and is
read through ``Pad(0)`` of its integers (onnxruntime folds that constant once, at session start): the stored
integers, :func:`onnxsq.params.params_from_model`, ``inspect``'s zero counts and fine-tuning's start are
unchanged (:func:`onnxsq.qdq.read_qdq` reads a zero-padded integer constant as the constant it pads). The
input's own pair and what other readers read stay as they were (the re-quantized value is no tensor of its
own for params, as the re-read pairs of :func:`.insert.requantize_for_layers`).

Why: onnxruntime's x86 QLinearConv runs its symmetric direct kernel (MLAS ``MlasConvSym``: int8 weights at
zero point 0, input channels a multiple of 4, at least 16 output channels, a multiple of 8) and otherwise
im2col + QGEMM; a 3-channel stem took the slow path and ran 1.6-2.4x *slower* than the float NCHWc conv
(torch_resnet_basic: 140 of 604 us of int8 kernel time per run, profiled; the padded stem 85 us, the model
547 → 496 us CPU per run on one thread). The extra DequantizeLinear, Pad and QuantizeLinear on the input
(3 x H x W elements) cost a few microseconds.

Where it pays was measured (one QDQ conv + Relu, the Pad's cost included, 1 thread, CPU time): stride 1 with
kernels up to 3x3 gain 8-32% (3→16 3x3 on 64x64 197 → 175 us, 3→64 on 224x224 8.1 → 6.9 ms, 1→16 and 2→16
0.68-0.70x; 3→64 on 64x64 the same); with stride 2 a 3x3 conv is the same (0.92-1.05x) and 5x5 and 7x7 convs
run 1.2-1.6x *slower* padded (ResNet-50's 7x7/2 stem 2.9 → 3.8 ms): the direct kernel walks every kernel
position for each 4-channel block, the im2col GEMM the 3·k·k products at once. Those are left alone.

Left alone, each with a logged reason: a grouped Conv (no symmetric grouped kernel but depthwise); a weight
that is not int8 at zero point 0, or that another node reads too; fewer than 16 output channels or a count
that is not a multiple of 8 (the kernel would not take it: the pad would only add work); a stride or dilation
other than 1 or a kernel larger than 3 (measured slower or no faster, above); an input of unknown
channel count or rank below 3; opset below 11 (Pad's ``pads`` input).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from ...graph import UniqueNames, const_value

log = logging.getLogger(__name__)

ALIGN = 4  # MLAS's x86 symmetric conv: input channels a multiple of 4 (KernelInputChannelAlignment)
MIN_OUT, OUT_ALIGN = 16, 8  # ... at least 16 output channels (FilterOutputChannelPackCount), a multiple of 8
MAX_KERNEL = 3  # padded convs measured faster: stride 1, kernels up to 3x3 (module docstring)


def pad_input_channels(graph: gs.Graph, names: UniqueNames) -> list[str]:
    """Pad the input channels of every Conv that reads a quantized graph input (the module docstring), in
    place; what was padded, one line each (refusals are logged)."""
    inputs = {id(t) for t in graph.inputs}
    done = []
    for conv in [n for n in graph.nodes if n.op == "Conv" and len(n.inputs) >= 2]:
        dq = _input_dq(conv, inputs)
        if dq is None:
            continue
        label = conv.name or conv.outputs[0].name
        why = _refusal(graph, conv, dq)
        if why:
            if why != "aligned":
                log.info("%s: input channels not padded: %s", label, why)
            continue
        done.append(_pad(graph, names, conv, dq, label))
    if done:
        graph.toposort()
        log.info("input channels padded for onnxruntime's symmetric conv kernel: %s", "; ".join(done))
    return done


def _input_dq(conv: gs.Node, inputs: set[int]) -> gs.Node | None:
    """The DequantizeLinear of a graph input's QuantizeLinear that ``conv`` reads as its data, or None."""
    x = conv.inputs[0]
    dq = x.inputs[0] if x.inputs else None
    if dq is None or dq.op != "DequantizeLinear" or not dq.inputs[0].inputs:
        return None
    q = dq.inputs[0].inputs[0]
    if q.op != "QuantizeLinear" or id(q.inputs[0]) not in inputs:
        return None
    return dq


def _weight(conv: gs.Node) -> tuple[gs.Node | None, np.ndarray | None]:
    w = conv.inputs[1]
    wdq = w.inputs[0] if w.inputs else None
    if wdq is None or wdq.op != "DequantizeLinear":
        return None, None
    return wdq, const_value(wdq.inputs[0])


def _refusal(graph: gs.Graph, conv: gs.Node, dq: gs.Node) -> str:
    """Why ``conv`` is left alone ('aligned': nothing to do), or ''."""
    shape = dq.outputs[0].shape
    if shape is None or len(shape) < 3 or not isinstance(shape[1], int):
        return "the input's rank or channel count is unknown"
    if shape[1] % ALIGN == 0:
        return "aligned"
    if (graph.opset or 0) < 11:
        return f"opset {graph.opset} < 11 (Pad's pads input)"
    if int(conv.attrs.get("group", 1)) != 1:
        return "a grouped Conv (onnxruntime's symmetric kernel takes no groups but depthwise)"
    wdq, w = _weight(conv)
    if w is None or w.dtype != np.int8 or w.ndim != len(shape):
        return "its weight is not an int8 constant behind a DequantizeLinear"
    zp = const_value(wdq.inputs[2]) if len(wdq.inputs) > 2 else None
    if zp is not None and np.any(zp != 0):
        return "its weight's zero point is not 0"
    if len(conv.inputs[1].outputs) != 1 or len(wdq.inputs[0].outputs) != 1:
        return "its weight is read by another node too"
    if w.shape[0] < MIN_OUT or w.shape[0] % OUT_ALIGN:
        return (f"{w.shape[0]} output channels (onnxruntime's kernel needs at least {MIN_OUT}, a multiple of "
                f"{OUT_ALIGN}): padding would only add work")
    kernel, rank = list(w.shape[2:]), len(shape) - 2
    if (max(kernel, default=1) > MAX_KERNEL or any(int(v) != 1 for v in conv.attrs.get("strides", [1] * rank))
            or any(int(v) != 1 for v in conv.attrs.get("dilations", [1] * rank))):
        return (f"kernel {'x'.join(map(str, kernel))}, strides {conv.attrs.get('strides', [1] * rank)}: "
                "onnxruntime's im2col kernel is as fast there or faster (measured: 3x3/2 the same, 5x5/2 and 7x7/2 "
                "1.2-1.6x slower padded)")
    return ""


def _pad(graph: gs.Graph, names: UniqueNames, conv: gs.Node, dq: gs.Node, label: str) -> str:
    """Read ``conv``'s input zero-padded to a multiple of :data:`ALIGN` channels, its weight padded with zeros."""
    x = dq.outputs[0]
    c = int(x.shape[1])
    cp = -(-c // ALIGN) * ALIGN
    rank = len(x.shape)
    pads = np.zeros(2 * rank, dtype=np.int64)
    pads[rank + 1] = cp - c  # end of axis 1
    shape = [x.shape[0], cp, *x.shape[2:]]
    base = f"{x.name}_channels{cp}"
    padded = gs.Variable(names.fresh(base), dtype=x.dtype, shape=shape)
    graph.nodes.append(gs.Node("Pad", names.fresh(f"{base}_Pad"), inputs=[x, gs.Constant(names.fresh(
        f"{base}_pads"), pads)], outputs=[padded]))
    codes = gs.Variable(names.fresh(f"{base}_quantized"), dtype=dq.inputs[0].dtype, shape=shape)
    out = gs.Variable(names.fresh(f"{base}_dq"), dtype=x.dtype, shape=shape)
    graph.nodes.append(gs.Node("QuantizeLinear", names.fresh(f"{base}_QuantizeLinear"),
                               inputs=[padded, *dq.inputs[1:]], outputs=[codes]))
    graph.nodes.append(gs.Node("DequantizeLinear", names.fresh(f"{base}_DequantizeLinear"),
                               inputs=[codes, *dq.inputs[1:]], outputs=[out]))
    conv.inputs[0] = out
    wdq, w = _weight(conv)
    stored = wdq.inputs[0]
    wide = gs.Variable(names.fresh(f"{stored.name}_channels{cp}"), dtype=w.dtype, shape=[w.shape[0], cp, *w.shape[2:]])
    graph.nodes.append(gs.Node("Pad", names.fresh(f"{stored.name}_Pad"), inputs=[stored, gs.Constant(names.fresh(
        f"{stored.name}_pads"), pads)], outputs=[wide]))
    wdq.inputs[0] = wide
    if wdq.outputs[0].shape is not None:
        wdq.outputs[0].shape = list(wide.shape)
    return f"{label}: {c} -> {cp} input channels"
