"""Training-time rewrites of ops onnxruntime-training 1.19 has no usable gradient for, as ops it has:
``HardSigmoid``, ``HardSwish``, ``PRelu`` ("The gradient builder has not been registered") and an unpadded 2-D
``AveragePool`` (its CPU AveragePoolGrad died of SIGFPE on PP-OCRv4's recognizer: 3x2 kernel, stride 3x2).

``HardSigmoid(x) = clip(alpha·x + beta, 0, 1)`` is written ``Relu(u) - Relu(u - 1)`` with ``u = alpha·x + beta``
(the same values; the gradient ``alpha`` inside ``(0, 1)`` and 0 outside, as the op's), and
``HardSwish(x) = x · HardSigmoid(x; 1/6, 1/2)``. ``PRelu(x, a) = Relu(x) - a · Relu(-x)``: bit for bit the op's
values (``x`` where ``x > 0``; else ``0 - a·(-x)``, and negation, a product's sign and ``0 - v`` are exact;
only a zero's sign may differ), its gradient ``1`` or ``a`` by the sign of ``x``; the slope input ``a`` stays
the model's tensor, broadcast as the op broadcasts it. ``AveragePool`` without padding (or ``ceil_mode``) on a
static C-channel input is a depthwise ``Conv`` with the constant kernel ``1/(kh·kw)`` (not a trained weight).
Registered in :data:`onnxsq.training.rewrites.REWRITES`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import UniqueNames, attr


def _const(model: onnx.ModelProto, namer: UniqueNames, base: str, value: float) -> str:
    name = namer(base)
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    return name


def _hard_sigmoid(model, namer, tag: str, x: str, alpha: float, beta: float, out: str) -> list[onnx.NodeProto]:
    u, low, high, hi_in = (namer(f"{tag}/{s}") for s in ("affine_mul", "relu", "relu1", "minus1"))
    ua = namer(f"{tag}/affine")
    return [
        helper.make_node("Mul", [x, _const(model, namer, f"{tag}/alpha", alpha)], [u], name=namer(f"{tag}/mul")),
        helper.make_node("Add", [u, _const(model, namer, f"{tag}/beta", beta)], [ua], name=namer(f"{tag}/add")),
        helper.make_node("Relu", [ua], [low], name=namer(f"{tag}/relu")),
        helper.make_node("Sub", [ua, _const(model, namer, f"{tag}/one", 1.0)], [hi_in], name=namer(f"{tag}/sub1")),
        helper.make_node("Relu", [hi_in], [high], name=namer(f"{tag}/relu1")),
        helper.make_node("Sub", [low, high], [out], name=namer(f"{tag}/clip")),
    ]


def rewrite_hard_sigmoid(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    tag = node.name or node.output[0]
    alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    return _hard_sigmoid(model, namer, tag, node.input[0], alpha, beta, node.output[0]), \
        "as Relu(a·x + b) - Relu(a·x + b - 1)"


def rewrite_hard_swish(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    tag = node.name or node.output[0]
    gate = namer(f"{tag}/gate")
    nodes = _hard_sigmoid(model, namer, tag, node.input[0], 1.0 / 6.0, 0.5, gate)
    nodes.append(helper.make_node("Mul", [node.input[0], gate], [node.output[0]], name=namer(f"{tag}/mul_gate")))
    return nodes, "as x · (Relu(x/6 + 1/2) - Relu(x/6 - 1/2))"


def rewrite_prelu(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    tag = node.name or node.output[0]
    x, slope = node.input[0], node.input[1]
    neg, pos, negpart, scaled = (namer(f"{tag}/{s}") for s in ("neg", "relu", "relu_neg", "slope_mul"))
    return [
        helper.make_node("Relu", [x], [pos], name=namer(f"{tag}/relu")),
        helper.make_node("Neg", [x], [neg], name=namer(f"{tag}/neg")),
        helper.make_node("Relu", [neg], [negpart], name=namer(f"{tag}/relu_neg")),
        helper.make_node("Mul", [slope, negpart], [scaled], name=namer(f"{tag}/slope")),
        helper.make_node("Sub", [pos, scaled], [node.output[0]], name=namer(f"{tag}/prelu")),
    ], "as Relu(x) - a·Relu(-x)"


def rewrite_average_pool(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    kernel = [int(k) for k in attr(node, "kernel_shape")]
    dims = shapes.get(node.input[0]) if hasattr(shapes, "get") else None
    if len(kernel) != 2 or any(attr(node, "pads", [0]) or [0]) or int(attr(node, "ceil_mode", 0)) \
            or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise ValueError("only an unpadded 2-D AveragePool is rewritten")
    if not dims or len(dims) != 4 or not isinstance(dims[1], int) or dims[1] < 1:
        raise ValueError("an AveragePool with an unknown channel count is not rewritten")
    tag, c = node.name or node.output[0], int(dims[1])
    w = namer(f"{tag}/mean_kernel")
    model.graph.initializer.append(numpy_helper.from_array(
        np.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), np.float32), w))
    strides = [int(v) for v in (attr(node, "strides") or [1, 1])]
    conv = helper.make_node("Conv", [node.input[0], w], [node.output[0]], name=namer(f"{tag}/as_conv"),
                            kernel_shape=kernel, strides=strides, group=c)
    return [conv], f"as a depthwise Conv with a constant {kernel[0]}x{kernel[1]} mean kernel"


ACT_REWRITES = {"HardSigmoid": rewrite_hard_sigmoid, "HardSwish": rewrite_hard_swish, "PRelu": rewrite_prelu,
                "AveragePool": rewrite_average_pool}
