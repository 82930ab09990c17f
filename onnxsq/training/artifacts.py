"""The training graph: which tensors train, training-time rewrites, loss blocks, ORT artifacts.

The user's model is never edited: a *copy* becomes the training model, and training only changes
initializer values, which :mod:`onnxsq.training.export` writes back into the user's own graph.

Training-time rewrites (onnxruntime-training 1.19 has no CPU gradient for ConvTranspose or Resize):

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

BatchNormalization trains on batch statistics (``training_mode=1``, opset >= 14: older training copies
are converted to opset 15); its running mean/var are frozen parameters that onnxruntime updates.

Losses: cross-entropy (classification; per pixel with the ignore label for segmentation) plus the
L1 term ``l1 * sum|w|`` over conv/fc weights. Every term is rank 0 (see the notes: a rank-0 + shape-[1]
sum breaks the gradient builder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedModelError, first_line
from ..graph import UniqueNames, data_inputs
from ..model_io import opsets
from ..sparsity import CONV_OPS

log = logging.getLogger(__name__)

MAX_IR = 10  # onnxruntime(-training) 1.19 loads IR <= 10
TRAIN_OPSET = 15
LABELS = "labels"
WEIGHT_OPS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
BIAS_OPS = {"Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,), "PRelu": (1,), "BatchNormalization": (1, 2)}


@dataclass
class TrainingGraph:
    """The forward model handed to ``generate_artifacts`` plus what the loop needs to know."""

    model: onnx.ModelProto
    input_name: str
    output_name: str
    trainable: list[str]
    frozen: list[str]  # BN running statistics, updated by onnxruntime itself
    weights: dict[str, str]  # conv/fc weight name → op (L1, weight decay and masks apply to these)
    conv_weights: dict[str, int]  # Conv/ConvTranspose weight → group (onnxsq.sparsity's "conv weights")
    rewrites: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, what was done)


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _is_float(t: onnx.TensorProto) -> bool:
    return t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


def classify_params(model: onnx.ModelProto) -> tuple[list[str], list[str], dict[str, str], dict[str, int]]:
    """(trainable, frozen, weights, conv_weights) by the role each initializer plays in the graph."""
    inits = _inits(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    trainable: dict[str, None] = {}
    frozen: dict[str, None] = {}
    weights: dict[str, str] = {}
    conv_weights: dict[str, int] = {}
    for node in model.graph.node:
        ins = list(node.input)
        for i in WEIGHT_OPS.get(node.op_type, ()):
            if i < len(ins) and ins[i] in inits and _is_float(inits[ins[i]]) and len(inits[ins[i]].dims) >= 2:
                trainable[ins[i]] = None
                weights[ins[i]] = node.op_type
                if node.op_type in CONV_OPS:  # the same "conv weights" as onnxsq.sparsity and the tables
                    group = next((a.i for a in node.attribute if a.name == "group"), 1)
                    conv_weights[ins[i]] = group
        for i in BIAS_OPS.get(node.op_type, ()):
            if i < len(ins) and ins[i] in inits and _is_float(inits[ins[i]]):
                trainable[ins[i]] = None
        if node.op_type == "BatchNormalization":
            for name in ins[3:5]:
                if name in inits:
                    frozen[name] = None
        # A bias added after MatMul (PyTorch's Linear export) trains too; other Add constants
        # (input normalisation) do not.
        if node.op_type == "Add":
            for a, b in ((0, 1), (1, 0)):
                p = producers.get(ins[a])
                if ins[b] in inits and _is_float(inits[ins[b]]) and p is not None and p.op_type in WEIGHT_OPS:
                    trainable[ins[b]] = None
    for name in frozen:
        trainable.pop(name, None)
    return list(trainable), list(frozen), weights, conv_weights


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
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
    w = _inits(model).get(node.input[1])
    if w is None or len(w.dims) != 4:
        raise ValueError("needs a constant 4-D weight")
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or _attr(node, "output_shape"):
        raise ValueError("auto_pad/output_shape are not rewritten")
    if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        raise ValueError("dilated ConvTranspose is not rewritten")
    cin, cout_g, kh, kw = w.dims
    g = _attr(node, "group", 1)
    sh, sw = _attr(node, "strides", [1, 1])
    pbh, pbw, peh, pew = _attr(node, "pads", [0, 0, 0, 0])
    oph, opw = _attr(node, "output_padding", [0, 0])
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

    inits = _inits(model)
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
        if n and n not in _inits(model):
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


def _convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if opsets(model).get("", opsets(model).get("ai.onnx", 0)) >= 14:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, TRAIN_OPSET)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"training needs opset >= 14 for BatchNormalization's training mode and converting this "
            f"opset-{opsets(model).get('')} model failed ({first_line(exc)})") from None
    converted.ir_version = min(max(converted.ir_version, 8), MAX_IR)
    return converted


def _set_batch_symbolic(model: onnx.ModelProto) -> None:
    """Let the training graph take any batch size (inference models often fix N = 1)."""
    inits = {i.name for i in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    del model.graph.value_info[:]


def build_training_graph(model: onnx.ModelProto) -> TrainingGraph:
    """A training copy of ``model``: rewrites, BN in training mode, parameter roles."""
    inputs = data_inputs(model)
    if len(inputs) != 1:
        raise UnsupportedModelError(f"training needs a model with one input, this one has {len(inputs)}")
    if not model.graph.output:
        raise UnsupportedModelError("the model has no outputs")
    trainable, frozen, weights, conv_weights = classify_params(model)
    if not trainable:
        raise UnsupportedModelError("the model has no trainable weights (Conv/Gemm/MatMul/BN initializers)")
    tm = onnx.ModelProto()
    tm.CopyFrom(model)
    tm.ir_version = min(tm.ir_version, MAX_IR)
    tm = _convert_opset(tm)
    shapes = _shapes(tm)
    namer = UniqueNames(tm)
    rewrites: list[tuple[str, str, str]] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in tm.graph.node:
        fn = {"ConvTranspose": _rewrite_conv_transpose, "Resize": _rewrite_resize}.get(node.op_type)
        if fn is None:
            new_nodes.append(node)
            continue
        try:
            nodes, how = fn(tm, node, shapes, namer)
        except ValueError as exc:
            rewrites.append((node.name or node.output[0], node.op_type, f"kept: {exc} (no CPU gradient)"))
            new_nodes.append(node)
            continue
        rewrites.append((node.name or node.output[0], node.op_type, how))
        new_nodes.extend(nodes)
    for node in new_nodes:
        if node.op_type == "BatchNormalization":
            del node.attribute[:]
            eps = _attr_from(model, node.name, "epsilon", 1e-5)
            mom = _attr_from(model, node.name, "momentum", 0.9)
            node.attribute.extend([helper.make_attribute("epsilon", eps), helper.make_attribute("momentum", mom),
                                   helper.make_attribute("training_mode", 1)])
            tag = node.name or node.output[0]
            del node.output[1:]
            node.output.extend([namer(f"{tag}/running_mean"), namer(f"{tag}/running_var")])
    del tm.graph.node[:]
    tm.graph.node.extend(new_nodes)
    used = {i for n in tm.graph.node for i in n.input}
    kept = [i for i in tm.graph.initializer if i.name in used]  # e.g. a rewritten Resize's scales
    del tm.graph.initializer[:]
    tm.graph.initializer.extend(kept)
    _set_batch_symbolic(tm)
    return TrainingGraph(tm, inputs[0].name, model.graph.output[0].name, trainable, frozen, weights,
                         conv_weights, rewrites)


def _attr_from(model: onnx.ModelProto, node_name: str, attr: str, default: float) -> float:
    for node in model.graph.node:
        if node.name == node_name and node.op_type == "BatchNormalization":
            return float(_attr(node, attr, default))
    return default


def make_loss_block(task: str, l1: float, l1_weights: list[str], ignore_label: int, label_rank: int):
    """An onnxblock computing cross-entropy (+ the L1 term) from the model's first output."""
    from onnxruntime.training import onnxblock

    class OnnxsqLoss(onnxblock.Block):
        def build(self, output_name: str, *_others: str):
            ce = onnxblock.loss.CrossEntropyLoss(
                ignore_index=ignore_label if task == "segmentation" else None)
            total = ce(output_name, LABELS)
            # onnxblock declares labels as the logits minus their *last* axis ((N,C,H) for NCHW
            # logits); the labels really are the logits minus the class axis 1.
            dims = ["N"] + [f"d{i}" for i in range(1, label_rank)]
            for vi in self.base.graph.input:
                if vi.name == LABELS:
                    vi.CopyFrom(helper.make_tensor_value_info(LABELS, TensorProto.INT64, dims))
            if l1 > 0:
                for name in l1_weights:
                    term = onnxblock.blocks.ReduceSum(keepdims=False)(
                        onnxblock.blocks.Mul()(onnxblock.blocks.Abs()(name), onnxblock.blocks.Constant(l1)()))
                    total = onnxblock.blocks.Add()(total, term)
            return total

    return OnnxsqLoss()


@contextlib.contextmanager
def _native_stderr_to(path: Path):
    """Send file descriptor 2 to ``path`` while onnxruntime's gradient builder runs.

    Its C++ logger prints dozens of INFO lines whatever the Python-side severity is set to.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def generate(graph: TrainingGraph, workdir: Path, *, task: str, l1: float, ignore_label: int,
             label_rank: int, extra_outputs: list[str] | tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write the training model and its initial checkpoint into ``workdir``; return both paths.

    ``extra_outputs``: tensors the training model returns after the loss (they need value_info).
    """
    from onnxruntime.training import artifacts

    block = make_loss_block(task, l1, list(graph.weights), ignore_label, label_rank)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with _native_stderr_to(workdir / "gradient_builder.log"):
            artifacts.generate_artifacts(graph.model, requires_grad=graph.trainable, frozen_params=graph.frozen,
                                         loss=block, optimizer=None, artifact_directory=str(workdir),
                                         additional_output_names=list(extra_outputs) or None)
    except Exception as exc:  # noqa: BLE001 - the gradient builder raises RuntimeError with C++ text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise UnsupportedModelError(f"onnxruntime-training cannot build the gradient graph: {first}") from None
    train_path = workdir / "training_model.onnx"
    tm = onnx.load(str(train_path))
    if tm.ir_version > MAX_IR:  # keep what onnxruntime 1.19 loads, whatever onnx wrote
        tm.ir_version = MAX_IR
        onnx.save(tm, str(train_path))
    return train_path, workdir / "checkpoint"
