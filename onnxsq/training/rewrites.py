"""Training-time rewrites: ops onnxruntime-training 1.19 has no CPU gradient for, as ops it has.

* ``ConvTranspose(x, W)`` (strides ``s``, kernel ``k``, pads ``pb/pe``, output padding ``op``, group
  ``g``) as a **sub-pixel decomposition**, on a static H×W input: output row ``q·s + r`` of the uncropped
  result depends only on the taps ``k ≡ r (mod s)``, so the ``s_h·s_w`` output phases are stride-1
  correlations of ``x`` with the flipped sub-kernels ``W[..., (m-1-t)·s + r]`` (``m = ⌈(k + max(0, op-pe))/s⌉``,
  taps past the kernel are zero: the output padding then falls on zero taps). All phases run as *one*
  Conv with ``g·s_h·s_w·C_out/g`` output channels (kernel built from ``W`` by a 0/1 selection GEMM →
  Transpose → Reshape), pads ``m-1``; a Transpose (rows) and a permutation GEMM (columns) interleave
  the phases, a Slice crops ``pb`` and the end, the bias is added after. Same sums as ConvTranspose, no
  multiply-add on inserted zeros.
* Otherwise (dynamic height) the older form: ``Conv(zero_insert_s(x), flip(swap(W)), pads = k-1-pb,
  k-1-pe+op-(s-1))``, ``s²`` times the multiply-adds: the input is spread out
  with ``s-1`` zeros after each element (Unsqueeze → Expand → Mul by a one-hot → Reshape), the kernel
  is flipped spatially (Gather with reversed indices) and its in/out axes swapped per group
  (Reshape → Transpose → Reshape). ``W`` stays the trained tensor, in its own layout, under its name.
  Refused (left as is, which then fails on the CPU with ORT's message): dilations != 1, auto_pad,
  output_shape, non-2-D kernels, and geometries that would need a negative Conv pad.
* ``Resize`` on a static N×C×H×W input that scales only H and W is separable in every ONNX mode
  (nearest, linear, cubic), so ``Y = A_h · X · A_wᵀ`` with constant interpolation matrices. The
  matrices are *measured*: the same Resize node is run by onnxruntime on one-hot inputs, so every
  attribute (coordinate transformation, rounding, cubic coefficient, antialias) is honoured exactly.
  Its ``sizes`` may be computed in the graph (Shape → Slice → Concat: "as large as that feature map")
  where the output's height and width are known (fine-tuning measures them on its input size): they
  then stand for it; roi and scales must be constants.

For speed alone (same function, a faster CPU gradient): ``Relu`` as ``x · float(x > 0)``
(:func:`relu_as_mask`), ``GlobalAveragePool`` as a GEMM (:func:`global_average_pool_as_matmul`).

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
from .rewrites_act import ACT_REWRITES
from .rewrites_lstm import rewrite_lstm


class Shapes(dict):
    """Tensor name → static dims (None where unknown); ``types``: name → ONNX element type."""

    types: dict[str, int]


def static_shapes(model: onnx.ModelProto) -> Shapes:
    """Static shapes (and element types) of every tensor shape inference can tell."""
    out = Shapes()
    out.types = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes just means fewer rewrites are possible
        return out
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        out.types[vi.name] = vi.type.tensor_type.elem_type
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
        out.types[init.name] = init.data_type
    return out


def _const(model: onnx.ModelProto, namer: UniqueNames, base: str, value: np.ndarray) -> str:
    name = namer(base)
    model.graph.initializer.append(numpy_helper.from_array(np.require(value, requirements="C"), name))
    return name


def _rewrite_conv_transpose(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing ``node`` with Conv (see the module docstring), or raise ValueError(reason)."""
    _deconv_geometry(model, node)  # what neither form handles: the reason is the same
    xshape = shapes.get(node.input[0])
    if xshape and len(xshape) == 4 and None not in xshape[2:]:
        return _subpixel(model, node, shapes, namer)
    return _zero_inserted(model, node, shapes, namer)


def _deconv_geometry(model, node) -> dict:
    """ConvTranspose attributes the rewrites handle, or ValueError(reason)."""
    w = {i.name: i for i in model.graph.initializer}.get(node.input[1])
    if w is None or len(w.dims) != 4:
        raise ValueError("needs a constant 4-D weight")
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attr(node, "output_shape"):
        raise ValueError("auto_pad/output_shape are not rewritten")
    if any(d != 1 for d in attr(node, "dilations", [1, 1])):
        raise ValueError("dilated ConvTranspose is not rewritten")
    cin, cout_g, kh, kw = w.dims
    return {"cin": cin, "cout_g": cout_g, "k": (kh, kw), "g": attr(node, "group", 1),
            "s": tuple(attr(node, "strides", [1, 1])), "pads": list(attr(node, "pads", [0, 0, 0, 0])),
            "op": tuple(attr(node, "output_padding", [0, 0]))}


def _node(nodes: list, namer: UniqueNames, op: str, inputs: list[str], base: str, out: str | None = None,
          **attrs) -> str:
    """Append one node; its output is ``out`` or a fresh name from ``base`` (the node's name too)."""
    name = namer(base)
    nodes.append(helper.make_node(op, inputs, [out or name], name=name, **attrs))
    return out or name


def _taps(geo: dict) -> tuple[int, int]:
    """Sub-kernel taps (mh, mw): enough for the kernel and the output padding past the end pad."""
    (kh, kw), (sh, sw), (oph, opw), pads = geo["k"], geo["s"], geo["op"], geo["pads"]
    return -(-(kh + max(0, oph - pads[2])) // sh), -(-(kw + max(0, opw - pads[3])) // sw)


def _subpixel_kernel(model, node, namer, geo: dict, nodes: list) -> str:
    """The Conv kernel ``[g·C_out/g·sh·sw, C_in/g, mh, mw]`` of every output phase, built from ``W``.

    One GEMM with a 0/1 selection matrix does the flip, the phase split and the zero taps:
    ``W[C_in·C_out/g, kh·kw] @ S[kh·kw, sh·sw·mh·mw]`` (a column without a tap stays zero), then the
    output channels are ordered (group, channel, row phase, column phase) for :func:`_interleave`.
    """
    tag, (kh, kw), (sh, sw), g = node.name or node.output[0], geo["k"], geo["s"], geo["g"]
    cin, cout_g = geo["cin"], geo["cout_g"]
    mh, mw = _taps(geo)
    select = np.zeros((kh * kw, sh * sw * mh * mw), np.float32)
    for col, (rh, rw, th, tw) in enumerate(np.ndindex(sh, sw, mh, mw)):
        ah, aw = (mh - 1 - th) * sh + rh, (mw - 1 - tw) * sw + rw  # the tap of phase (rh, rw) at (th, tw)
        if ah < kh and aw < kw:
            select[ah * kw + aw, col] = 1.0
    w = _node(nodes, namer, "Reshape", [node.input[1], _const(model, namer, f"{tag}/sp_wflat", np.array(
        [cin * cout_g, kh * kw], np.int64))], f"{tag}/sp_wflat")
    w = _node(nodes, namer, "MatMul", [w, _const(model, namer, f"{tag}/sp_select", select)], f"{tag}/sp_taps")
    w = _node(nodes, namer, "Reshape", [w, _const(model, namer, f"{tag}/sp_w7", np.array(
        [g, cin // g, cout_g, sh, sw, mh, mw], np.int64))], f"{tag}/sp_w7")
    w = _node(nodes, namer, "Transpose", [w], f"{tag}/sp_order", perm=[0, 2, 3, 4, 1, 5, 6])
    target = np.array([g * cout_g * sh * sw, cin // g, mh, mw], np.int64)
    return _node(nodes, namer, "Reshape", [w, _const(model, namer, f"{tag}/sp_kshape", target)], f"{tag}/sp_kernel")


def _subpixel(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    """ConvTranspose as one Conv over all output phases + interleave + crop (module docstring)."""
    geo = _deconv_geometry(model, node)
    (kh, kw), (sh, sw), g, cout_g = geo["k"], geo["s"], geo["g"], geo["cout_g"]
    pbh, pbw, peh, pew = geo["pads"]
    xshape = shapes.get(node.input[0])
    if not xshape or len(xshape) != 4 or None in xshape[2:]:
        raise ValueError("input height and width must be static")
    h, w_ = xshape[2], xshape[3]
    mh, mw = _taps(geo)
    out_h = sh * (h - 1) + geo["op"][0] + kh - pbh - peh
    out_w = sw * (w_ - 1) + geo["op"][1] + kw - pbw - pew
    hq, wq = h + mh - 1, w_ + mw - 1
    if pbh + out_h > hq * sh or pbw + out_w > wq * sw or min(out_h, out_w) <= 0:
        raise ValueError("output padding beyond the kernel's reach")
    tag, nodes = node.name or node.output[0], []
    kernel = _subpixel_kernel(model, node, namer, geo, nodes)
    y = _node(nodes, namer, "Conv", [node.input[0], kernel], f"{tag}/sp_conv", kernel_shape=[mh, mw],
              pads=[mh - 1, mw - 1, mh - 1, mw - 1], group=g)
    y = _interleave(model, namer, tag, y, g * cout_g, (sh, sw), (hq, wq), nodes)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    final = node.output[0]
    if (pbh, pbw, out_h, out_w) != (0, 0, hq * sh, wq * sw):
        crop = [_const(model, namer, f"{tag}/sp_{k}", np.array(v, np.int64)) for k, v in
                (("starts", [pbh, pbw]), ("ends", [pbh + out_h, pbw + out_w]), ("axes", [2, 3]))]
        y = _node(nodes, namer, "Slice", [y, *crop], f"{tag}/sp_crop", out=None if bias else final)
    elif not bias:
        y = _node(nodes, namer, "Identity", [y], f"{tag}/sp_out", out=final)
    if bias:
        b = _node(nodes, namer, "Reshape", [bias, _const(model, namer, f"{tag}/sp_bshape", np.array(
            [1, -1, 1, 1], np.int64))], f"{tag}/sp_bias")
        _node(nodes, namer, "Add", [y, b], f"{tag}/sp_add", out=final)
    return nodes, (f"as one Conv over the {sh * sw} output phases of the input (sub-pixel: stride {sh}x{sw}, "
                   f"group {g}; no work on inserted zeros)")


def _interleave(model, namer, tag: str, y: str, c: int, s: tuple[int, int], hw: tuple[int, int],
                nodes: list) -> str:
    """``[N, c·sh·sw, Hq, Wq]`` (channels ordered channel, row phase, column phase) → ``[N, c, Hq·sh, Wq·sw]``.

    Rows: one Transpose moving Hq before the phases (a single-axis move onnxruntime copies in blocks of
    ``sw·Wq``). Columns: ``[.., sw·Wq] @ P`` with the 0/1 permutation matrix ``P`` (one GEMM forward,
    one backward): onnxruntime's Transpose writes an innermost axis of 2 element by element, ~4x
    slower. ``x·1 + 0·…`` is exact for finite values.
    """
    (sh, sw), (hq, wq) = s, hw
    y = _node(nodes, namer, "Reshape", [y, _const(model, namer, f"{tag}/sp_split", np.array(
        [-1, c, sh, sw, hq, wq], np.int64))], f"{tag}/sp_phases")
    if sh * sw > 1:
        y = _node(nodes, namer, "Transpose", [y], f"{tag}/sp_rows", perm=[0, 1, 4, 2, 3, 5])  # [N, c, Hq, sh, sw, Wq]
    if sw > 1:
        y = _node(nodes, namer, "Reshape", [y, _const(model, namer, f"{tag}/sp_colblock", np.array(
            [-1, c, hq, sh, sw * wq], np.int64))], f"{tag}/sp_colblock")
        perm = np.zeros((sw * wq, wq * sw), np.float32)
        r, q = np.divmod(np.arange(sw * wq), wq)
        perm[np.arange(sw * wq), q * sw + r] = 1.0
        y = _node(nodes, namer, "MatMul", [y, _const(model, namer, f"{tag}/sp_colperm", perm)], f"{tag}/sp_cols")
    return _node(nodes, namer, "Reshape", [y, _const(model, namer, f"{tag}/sp_merge", np.array(
        [-1, c, hq * sh, wq * sw], np.int64))], f"{tag}/sp_full")


def _zero_inserted(model, node, shapes, namer) -> tuple[list[onnx.NodeProto], str]:
    """The zero-insertion form (any input height), or raise ValueError(reason)."""
    geo = _deconv_geometry(model, node)
    cin, cout_g, (kh, kw), g = geo["cin"], geo["cout_g"], geo["k"], geo["g"]
    (sh, sw), (pbh, pbw, peh, pew), (oph, opw) = geo["s"], geo["pads"], geo["op"]
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


def _resize_matrices(model: onnx.ModelProto, node: onnx.NodeProto, h: int, w: int,
                     out_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation matrices (Ho×H, Wo×W), measured by running ``node`` on one-hot inputs; ``out_hw``: the
    output's height and width where ``sizes`` is computed in the graph (it then stands for that)."""
    from ..runtime import make_session

    inits = {i.name: i for i in model.graph.initializer}
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if out_hw is not None:
        inits = {**inits, sizes: numpy_helper.from_array(np.array([1, 1, *out_hw], np.int64), sizes)}
    extra = [inits[n] for n in node.input[1:] if n and n in inits]
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
    consts = {i.name for i in model.graph.initializer}
    computed = [k for k, n in enumerate(node.input) if k and n and n not in consts]
    out_hw = None
    if computed == [3] and yshape and len(yshape) == 4 and all(isinstance(d, int) for d in yshape[2:]):
        out_hw = (yshape[2], yshape[3])  # sizes from Shape ops (an FPN's "as large as that map"), measured
    elif computed:
        raise ValueError("roi/scales must be constants, and sizes constant or of a measured output size")
    a_h, a_w = _resize_matrices(model, node, xshape[2], xshape[3], out_hw)
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


def relu_as_mask(model, node, shapes, namer) -> list[onnx.NodeProto] | None:
    """``Relu(x)`` as ``x · float(x > 0)`` for float32 ``x``, or None.

    The same values (``-0.0`` where Relu gives ``+0.0``) and the same gradient, ``dy · (x > 0)``; but
    onnxruntime 1.19's CPU ReluGrad is a slow elementwise loop (measured 1.6 ms where this form's
    backward Mul takes 0.14 ms, 32×32×16×16 floats), and the forward Greater, Cast, Mul stay cheap.
    """
    if getattr(shapes, "types", {}).get(node.input[0]) != TensorProto.FLOAT:
        return None
    tag = node.name or node.output[0]
    nodes: list[onnx.NodeProto] = []
    zero = _const(model, namer, f"{tag}/zero", np.array(0.0, np.float32))
    positive = _node(nodes, namer, "Greater", [node.input[0], zero], f"{tag}/positive")
    mask = _node(nodes, namer, "Cast", [positive], f"{tag}/mask", to=TensorProto.FLOAT)
    _node(nodes, namer, "Mul", [node.input[0], mask], f"{tag}/masked", out=node.output[0])
    return nodes


def global_average_pool_as_matmul(model, node, shapes, namer) -> list[onnx.NodeProto] | None:
    """``GlobalAveragePool(x)`` on a static float32 N×C×H×W as ``[N, C, H·W] @ (1/(H·W))·1``, or None.

    The same mean (its rounding where ``1/(H·W)`` is not a power of two); the gradient, an outer
    product by one GEMM, replaces onnxruntime's Expand (measured 87 µs on 32×64×4×4 where both GEMMs
    take a few).
    """
    x = shapes.get(node.input[0])
    if getattr(shapes, "types", {}).get(node.input[0]) != TensorProto.FLOAT or not x or len(x) != 4 \
            or None in x[2:]:
        return None
    tag, hw, nodes = node.name or node.output[0], x[2] * x[3], []
    flat = _node(nodes, namer, "Reshape", [node.input[0], _const(model, namer, f"{tag}/flat", np.array(
        [0, 0, hw], np.int64))], f"{tag}/flat")
    mean = _node(nodes, namer, "MatMul", [flat, _const(model, namer, f"{tag}/weights", np.full(
        (hw, 1), 1.0 / hw, np.float32))], f"{tag}/mean")
    _node(nodes, namer, "Reshape", [mean, _const(model, namer, f"{tag}/pooled", np.array([0, 0, 1, 1], np.int64))],
          f"{tag}/pooled", out=node.output[0])
    return nodes


REWRITES = {"ConvTranspose": _rewrite_conv_transpose, "Resize": _rewrite_resize, "LSTM": rewrite_lstm,
            **ACT_REWRITES}
# rewrites for speed alone (same function, faster gradient): not listed in the report
SPEED_REWRITES = {"Relu": relu_as_mask, "GlobalAveragePool": global_average_pool_as_matmul}
REROUNDING_REWRITES = {"GlobalAveragePool"}  # their forward may round otherwise (Relu's is x or a zero exactly)
