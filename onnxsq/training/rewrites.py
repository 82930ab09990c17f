"""Training-time rewrites: ops onnxruntime-training 1.19 has no CPU gradient for, as ops it has.

* ``ConvTranspose(x, W)`` with strides ``s``, pads ``pb/pe``, output padding ``op``, group ``g`` equals
  ``Conv(zero_insert_s(x), flip(swap(W)), pads = k-1-pb, k-1-pe+op-(s-1))``: the input is spread out
  with ``s-1`` zeros after each element (Unsqueeze → Expand → Mul by a one-hot → Reshape), the kernel
  is flipped spatially (Gather with reversed indices) and its in/out axes swapped per group
  (Reshape → Transpose → Reshape). ``W`` stays the trained tensor, in its own layout, under its name.
  Refused (left as is, which then fails on the CPU with ORT's message): dilations != 1, auto_pad,
  output_shape, non-2-D kernels, and geometries that would need a negative Conv pad.
* ``Resize`` on a static N×C×H×W input that scales only H and W is separable in every ONNX mode
  (nearest, linear, cubic), so ``Y = A_h · X · A_wᵀ`` with constant interpolation matrices. The
  matrices are *measured*: the same Resize node is run by onnxruntime on one-hot inputs, so every
  attribute (coordinate transformation, rounding, cubic coefficient, antialias) is honoured exactly.

Each rewrite is ``rewrite(model, node, shapes, namer) -> (nodes, how)``: the replacement nodes (new
constants go into ``model``'s initializers) and one line for the report, or ``ValueError(reason)``
when the node is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import UniqueNames, attr
from ..model_io import MAX_IR


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Static shapes of every tensor shape inference can tell (None for unknown dims)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes just means fewer rewrites are possible
        return {}
    out: dict[str, list[int | None]] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _const(model: onnx.ModelProto, namer: UniqueNames, base: str, value: np.ndarray) -> str:
    name = namer(base)
    model.graph.initializer.append(numpy_helper.from_array(np.require(value, requirements="C"), name))
    return name


def _rewrite_conv_transpose(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing ``node`` with Conv (see the module docstring), or raise ValueError(reason)."""
    w = {i.name: i for i in model.graph.initializer}.get(node.input[1])
    if w is None or len(w.dims) != 4:
        raise ValueError("needs a constant 4-D weight")
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attr(node, "output_shape"):
        raise ValueError("auto_pad/output_shape are not rewritten")
    if any(d != 1 for d in attr(node, "dilations", [1, 1])):
        raise ValueError("dilated ConvTranspose is not rewritten")
    cin, cout_g, kh, kw = w.dims
    g = attr(node, "group", 1)
    sh, sw = attr(node, "strides", [1, 1])
    pbh, pbw, peh, pew = attr(node, "pads", [0, 0, 0, 0])
    oph, opw = attr(node, "output_padding", [0, 0])
    xshape = shapes.get(node.input[0])
    if not xshape or len(xshape) != 4 or xshape[3] is None:
        raise ValueError("input width must be static")
    width = xshape[3]
    pads = [kh - 1 - pbh, kw - 1 - pbw, kh - 1 - peh + oph - (sh - 1), kw - 1 - pew + opw - (sw - 1)]
    if min(pads) < 0:
        raise ValueError(f"this geometry needs negative Conv pads {pads}")
    tag = node.name or node.output[0]
    nodes = []
    x = node.input[0]
    if sh > 1 or sw > 1:
        xu = namer(f"{tag}/zi_unsq")
        nodes.append(
            helper.make_node(
                "Unsqueeze", [x, _const(model, namer, f"{tag}/zi_axes", np.array([3, 5], np.int64))], [xu], name=xu
            )
        )
        xe = namer(f"{tag}/zi_expand")
        nodes.append(helper.make_node("Expand", [xu, _const(model, namer, f"{tag}/zi_shape",
                                                            np.array([1, 1, 1, sh, 1, sw], np.int64))], [xe], name=xe))
        onehot = np.zeros((1, 1, 1, sh, 1, sw), np.float32)
        onehot[0, 0, 0, 0, 0, 0] = 1.0
        xm = namer(f"{tag}/zi_mask")
        nodes.append(helper.make_node("Mul", [xe, _const(model, namer, f"{tag}/zi_onehot", onehot)], [xm], name=xm))
        x = namer(f"{tag}/zi_out")
        nodes.append(helper.make_node("Reshape", [xm, _const(model, namer, f"{tag}/zi_target",
                                                             np.array([0, 0, -1, width * sw], np.int64))], [x], name=x))
    wf = node.input[1]
    for axis, k in ((2, kh), (3, kw)):
        out = namer(f"{tag}/w_flip{axis}")
        idx = _const(model, namer, f"{tag}/w_rev{axis}", np.arange(k - 1, -1, -1, dtype=np.int64))
        nodes.append(helper.make_node("Gather", [wf, idx], [out], name=out, axis=axis))
        wf = out
    shapes_ = [("w_grp", [g, cin // g, cout_g, kh, kw]), ("w_conv", [g * cout_g, cin // g, kh, kw])]
    r1 = namer(f"{tag}/w_grp")
    nodes.append(helper.make_node("Reshape", [wf, _const(model, namer, f"{tag}/w_grp_shape",
                                                         np.array(shapes_[0][1], np.int64))], [r1], name=r1))
    t1 = namer(f"{tag}/w_swap")
    nodes.append(helper.make_node("Transpose", [r1], [t1], name=t1, perm=[0, 2, 1, 3, 4]))
    wc = namer(f"{tag}/w_conv")
    nodes.append(helper.make_node("Reshape", [t1, _const(model, namer, f"{tag}/w_conv_shape",
                                                         np.array(shapes_[1][1], np.int64))], [wc], name=wc))
    conv_in = [x, wc] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
    nodes.append(helper.make_node("Conv", conv_in, list(node.output), name=namer(f"{tag}/as_conv"),
                                  kernel_shape=[kh, kw], pads=pads, group=g, strides=[1, 1]))
    return nodes, f"as Conv on a zero-inserted input (stride {sh}x{sw}, group {g})"


def _resize_matrices(model: onnx.ModelProto, node: onnx.NodeProto, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation matrices (Ho×H, Wo×W), measured by running ``node`` on one-hot inputs."""
    from ..runtime import make_session

    inits = {i.name: i for i in model.graph.initializer}
    extra = [inits[n] for n in node.input[1:] if n and n in inits]
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    mats = []
    for axis, n in ((2, h), (3, w)):
        basis = np.zeros((1, n, h, w), np.float32)
        for c in range(n):
            if axis == 2:
                basis[0, c, c, :] = 1.0
            else:
                basis[0, c, :, c] = 1.0
        consts = []
        for t in extra:
            if t.name == sizes:  # sizes names the batch and channel extents too: use the basis's
                arr = numpy_helper.to_array(t).copy()
                arr[:2] = (1, n)
                t = numpy_helper.from_array(arr, t.name)
            consts.append(t)
        probe = helper.make_node(node.op_type, ["x", *node.input[1:]], ["y"], **{
            a.name: helper.get_attribute_value(a) for a in node.attribute})
        graph = helper.make_graph([probe], "resize_probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, h, w])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
        m = helper.make_model(graph, opset_imports=list(model.opset_import))
        m.ir_version = min(model.ir_version, MAX_IR)
        out = make_session(m).run(None, {"x": basis})[0]
        mats.append(out[0, :, :, 0].T if axis == 2 else out[0, :, 0, :].T)
    return np.ascontiguousarray(mats[0], np.float32), np.ascontiguousarray(mats[1], np.float32)


def _rewrite_resize(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    xshape = shapes.get(node.input[0])
    yshape = shapes.get(node.output[0])
    if not xshape or len(xshape) != 4 or None in xshape[2:]:
        raise ValueError("input must be 4-D with a static height and width")
    if yshape and len(yshape) == 4 and None not in yshape[1:2] and xshape[1] is not None and yshape[1] != xshape[1]:
        raise ValueError("resizes the channel axis")
    for n in node.input[1:]:
        if n and n not in {i.name: i for i in model.graph.initializer}:
            raise ValueError("roi/scales/sizes must be constants")
    a_h, a_w = _resize_matrices(model, node, xshape[2], xshape[3])
    # Separability check: the measured matrices must reproduce the op on a random input.
    tag = node.name or node.output[0]
    t = namer(f"{tag}/resize_w")
    nodes = [
        helper.make_node("MatMul", [node.input[0], _const(model, namer, f"{tag}/A_w_T", a_w.T.copy())], [t], name=t),
        helper.make_node(
            "MatMul", [_const(model, namer, f"{tag}/A_h", a_h), t], list(node.output), name=namer(f"{tag}/resize_h")
        ),
    ]
    return nodes, (f"as two MatMuls with measured {a_h.shape[0]}x{a_h.shape[1]} and "
                   f"{a_w.shape[0]}x{a_w.shape[1]} matrices")


REWRITES = {"ConvTranspose": _rewrite_conv_transpose, "Resize": _rewrite_resize}
