"""The training graph: which tensors train, training-time rewrites, loss blocks, ORT artifacts.

The user's model is never edited: a *copy* becomes the training model, and training only changes
initializer values, which :mod:`onnxsq.training.export` writes back into the user's own graph.

Training-time rewrites (ops without a CPU gradient in onnxruntime-training 1.19) are in
:mod:`onnxsq.training.rewrites`.

BatchNormalization trains on batch statistics (``training_mode=1``, opset >= 14: older training copies
are converted to opset 15); its running mean/var are frozen parameters that onnxruntime updates.

Losses: cross-entropy (classification; per pixel with the ignore label for segmentation, from fast
whole-tensor ops in :mod:`onnxsq.training.losses`) plus the
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
from typing import Any

import onnx
from onnx import TensorProto, helper

from ..errors import UnsupportedModelError, first_line
from ..graph import UniqueNames, attr, data_inputs
from ..model_io import MAX_IR, opsets
from ..sparsity import CONV_OPS
from .losses import add_pixel_cross_entropy
from .rewrites import REROUNDING_REWRITES, REWRITES, SPEED_REWRITES, static_shapes

log = logging.getLogger(__name__)

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


def _convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if opsets(model).get("", opsets(model).get("ai.onnx", 0)) >= 14:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, TRAIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - onnx's version converter raises assorted C++ errors
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


def build_training_graph(model: onnx.ModelProto, shapes_known: dict[str, list] | None = None, *,
                         same_rounding: bool = True) -> TrainingGraph:
    """A training copy of ``model``: rewrites, BN in training mode, parameter roles. ``shapes_known``: dims
    measured where shape inference cannot tell them (an LSTM's sequence length behind Shape ops). ``same_rounding``:
    no speed rewrite that may round otherwise (fine-tuning's student computes the quantized model bit for bit)."""
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
    shapes = static_shapes(tm)
    shapes.update({k: v for k, v in (shapes_known or {}).items()
                   if not shapes.get(k) or not all(isinstance(d, int) for d in shapes[k])})
    namer = UniqueNames(tm)
    rewrites: list[tuple[str, str, str]] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in tm.graph.node:
        fast = None if same_rounding and node.op_type in REROUNDING_REWRITES else SPEED_REWRITES.get(node.op_type)
        faster = fast(tm, node, shapes, namer) if fast is not None else None
        if faster is not None:
            new_nodes.extend(faster)
            continue
        fn = REWRITES.get(node.op_type)
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


def _attr_from(model: onnx.ModelProto, node_name: str, name: str, default: float) -> float:
    for node in model.graph.node:
        if node.name == node_name and node.op_type == "BatchNormalization":
            return float(attr(node, name, default))
    return default


def make_loss_block(task: str, l1: float, l1_weights: list[str], ignore_label: int, label_rank: int):
    """An onnxblock computing cross-entropy (+ the L1 term) from the model's first output."""
    from onnxruntime.training import onnxblock

    class OnnxsqLoss(onnxblock.Block):
        def build(self, output_name: str, *_others: str):
            # the labels are the logits minus the class axis 1 (onnxblock's own block would drop the last)
            dims = ["N"] + [f"d{i}" for i in range(1, label_rank)]
            if task == "segmentation":  # per pixel, from fast whole-tensor ops (see .losses)
                self.base.graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.INT64, dims))
                total = add_pixel_cross_entropy(self.base, output_name, LABELS, ignore_label,
                                                onnxblock._graph_utils.generate_graph_name)
            else:
                total = onnxblock.loss.CrossEntropyLoss()(output_name, LABELS)
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
             label_rank: int, extra_outputs: list[str] | tuple[str, ...] = (), loss: Any = None) -> tuple[Path, Path]:
    """Write the training model and its initial checkpoint into ``workdir``; return both paths.

    ``extra_outputs``: tensors the training model returns after the loss (they need value_info).
    ``loss``: an onnxblock loss instead of the task's cross-entropy (fine-tuning's teacher MSE).
    """
    from onnxruntime.training import artifacts

    block = loss if loss is not None else make_loss_block(task, l1, list(graph.weights), ignore_label, label_rank)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with _native_stderr_to(workdir / "gradient_builder.log"):
            artifacts.generate_artifacts(graph.model, requires_grad=graph.trainable, frozen_params=graph.frozen,
                                         loss=block, optimizer=None, artifact_directory=str(workdir),
                                         additional_output_names=list(extra_outputs) or None)
    except Exception as exc:  # noqa: BLE001 - the gradient builder raises RuntimeError with C++ text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].rsplit(" was false. ", 1)[-1]
        raise UnsupportedModelError(f"onnxruntime-training cannot build the gradient graph: {first}") from None
    train_path = workdir / "training_model.onnx"
    tm = onnx.load(str(train_path))
    if tm.ir_version > MAX_IR:  # keep what onnxruntime 1.19 loads, whatever onnx wrote
        tm.ir_version = MAX_IR
        onnx.save(tm, str(train_path))
    return train_path, workdir / "checkpoint"
