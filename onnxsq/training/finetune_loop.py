"""The fine-tuning run: the student's training artifacts, onnxruntime-training's forward and backward, and
AdamW in numpy on onnxruntime's own buffers (:mod:`.optim`), the float model's zeros masked."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import DataError, UnsupportedModelError
from ..graph import data_inputs
from ..params import TensorQuant
from .artifacts import build_training_graph, generate
from .finetune_graph import fix_input_shape, output_weights, student_graph, teacher_loss
from .optim import Optimizer

log = logging.getLogger(__name__)


def _tail(exc: BaseException) -> str:
    """The readable end of an onnxruntime error: its last sentence or two, without the C++ source locations."""
    text = " ".join(str(exc).split())
    for cut in (" was false. ", "Status Message: ", "RUNTIME_EXCEPTION : "):
        if cut in text:
            text = text.rsplit(cut, 1)[1]
    return text[-300:]


def measured_shapes(model: onnx.ModelProto, x: Mapping[str, np.ndarray]) -> dict[str, list]:
    """What the training rewrites need static and shape inference cannot tell behind Shape/Reshape chains, as
    one run on ``x`` shows it: the sequence inputs of the model's LSTMs (``[T, "N", features]``) and the
    outputs of Resizes whose sizes the graph computes (``["N", C, H, W]``)."""
    consts = {i.name for i in model.graph.initializer}
    seqs = [n.input[0] for n in model.graph.node if n.op_type == "LSTM"]
    ups = [n.output[0] for n in model.graph.node
           if n.op_type == "Resize" and len(n.input) > 3 and n.input[3] and n.input[3] not in consts]
    if not seqs and not ups:
        return {}
    from ..runtime import make_session
    from .finetune_graph import with_outputs

    values = dict(zip(seqs + ups, make_session(with_outputs(model, seqs + ups)).run(seqs + ups, dict(x))))
    out = {n: [int(values[n].shape[0]), "N", *map(int, values[n].shape[2:])] for n in seqs if values[n].ndim == 3}
    out.update({n: ["N", *map(int, values[n].shape[1:])] for n in ups if values[n].ndim == 4})
    return out


class StudentRun:
    """One fine-tuning run of ``model`` (the float model the quantize pass quantized, starting weights in)."""

    def __init__(self, model: onnx.ModelProto, plan: Any, tparams: Mapping[str, TensorQuant],
                 xs: Sequence[Mapping[str, np.ndarray]], targets: Sequence[Sequence[np.ndarray]], cfg: Any,
                 features: Sequence[str] = ()) -> None:
        self.cfg = cfg
        name = data_inputs(model)[0].name
        shapes = {tuple(x[name].shape[1:]) for x in xs}
        model = onnx.ModelProto.FromString(model.SerializeToString())
        fix_input_shape(model, name, xs[0][name].shape if len(shapes) == 1 else None, [t.ndim for t in targets[0]])
        graph = build_training_graph(model, measured_shapes(model, xs[0]))
        for out in graph.model.graph.output:  # the batch axis of an output is not always its first (ddddocr: T, N, C)
            for d in out.type.tensor_type.shape.dim:
                d.ClearField("dim_param")
                d.ClearField("dim_value")
        for node, op, how in graph.rewrites:  # a node kept as it is may still train; if not, its error says so
            log.info("fine-tuning graph: %s %s: %s", op, node, how)
        inputs = {vi.name for vi in data_inputs(model)}
        self.graph, self.missing = student_graph(graph, plan, tparams, inputs, features)
        if self.missing:
            log.info("not fake-quantized in fine-tuning (quantized at export): %s", ", ".join(self.missing[:5]))
        self.weights = output_weights(targets, len(features))

    def _open(self, workdir: Path) -> None:
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module

        train_path, ckpt = generate(self.graph, workdir, task="distillation", l1=0.0, ignore_label=-1,
                                    label_rank=0, loss=teacher_loss(self.weights))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.state = CheckpointState.load_checkpoint(str(ckpt))
        try:
            self.module = Module(str(train_path), self.state, None, "cpu", opts)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises RuntimeError with C++ text
            raise UnsupportedModelError(f"onnxruntime-training cannot run the training graph: {_tail(exc)}") from None
        self.module.train()
        self.w = {n: self.state.parameters[n].data for n in self.graph.trainable}

    def train(self, workdir: Path, xs: Sequence[Mapping[str, np.ndarray]], targets: Sequence[Sequence[np.ndarray]],
              masks: Mapping[str, np.ndarray], steps: Mapping[str, np.ndarray]) -> list[float]:
        """``finetune_iters`` AdamW steps on random batches of ``xs`` against ``targets``; the losses.
        ``steps``: each parameter's quantization step (broadcastable): the learning rate is in those units."""
        self._open(workdir)
        cfg, name = self.cfg, self.graph.input_name
        opt = Optimizer("adamw", self.w, momentum=0.0)
        for n, m in masks.items():
            if n in self.w:
                self.w[n] *= m
        rng = np.random.default_rng(0)
        batch, losses, grads = min(cfg.finetune_batch, len(xs)), [], {}
        if any(t.shape[:1] != (1,) for t in targets[0]):  # an output's batch axis is not its first: one at a time
            batch = 1
        for it in range(cfg.finetune_iters):
            pick = rng.choice(len(xs), size=batch, replace=False)
            x = np.concatenate([xs[i][name] for i in pick])
            ts = [np.concatenate([targets[i][k] for i in pick]) for k in range(len(targets[0]))]
            try:
                loss = self.module(x, *ts)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's errors carry the useful first line
                if batch > 1 and it == 0:  # a graph with a fixed batch dimension inside: one sample a step
                    batch = 1
                    continue
                raise DataError(f"fine-tuning step failed on a batch x{tuple(x.shape)}: {_tail(exc)}") from None
            lr = cfg.finetune_lr * 0.5 * (1.0 + math.cos(math.pi * it / cfg.finetune_iters))
            for n, w in self.w.items():
                g = grads.get(n)
                if g is None:
                    g = grads[n] = self.state.parameters[n].grad
                m = masks.get(n)
                opt.step(n, w, g, lr=lr * steps.get(n, 1.0), decay=0.0, t=it + 1,
                         mask=None if m is None else (lambda *arrays, m=m: [np.multiply(a, m, out=a) for a in arrays]))
            self.module.lazy_reset_grad()
            losses.append(float(np.asarray(loss).reshape(-1)[0]))
            if not math.isfinite(losses[-1]):
                raise DataError(f"the fine-tuning loss became {losses[-1]} at step {it}; lower --finetune-lr")
        return losses

    def values(self) -> dict[str, np.ndarray]:
        return {n: np.array(w, copy=True) for n, w in self.w.items()}
