"""The training loop: onnxruntime-training computes loss and gradients, onnxsq updates the weights.

Why the update is ours: onnxruntime-training 1.19's SGD has no momentum, weight decay or per-layer
learning rate, and its optimizer state cannot be masked. So each iteration runs the training model
(forward + backward) in onnxruntime and applies, in numpy on onnxruntime's own buffers
(:mod:`onnxsq.training.optim`: no per-step copies), SGD with momentum (Caffe's form) or AdamW;
weight decay on conv/fc weights only; masks applied to gradient, buffers and weights (exact zeros).
BatchNormalization's running statistics are updated by onnxruntime
itself (training_mode=1, the model's momentum). Learning-rate schedules use Caffe's names:
``fixed``, ``step`` (γ every ``stepsize``), ``multistep`` (γ at each ``stepvalue``), ``poly``
(``(1 - it/max_iter)^power``) and ``cosine``.

Checkpoints (``.npz``) hold every parameter, the optimizer buffers, masks, lr multipliers, the
sparsity factor, the iteration and the run's options; with the loader's (seed, epoch, batch)
determinism a resumed run repeats an uninterrupted one bit for bit on the same machine and thread
count. Resuming with other options warns by name (the stage and the optimizer must match).

Ctrl-C (SIGINT, in the main thread) is deferred to the end of the iteration it arrives in; the run then
writes its checkpoint (when it has a checkpoint path) and raises :class:`TrainingInterrupted`. A second
Ctrl-C interrupts at once, without a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..data.loader import Dataset, Loader
from ..errors import DataError, InvalidOptionError, UnsupportedModelError, first_line
from ..report import Report
from ..runtime import import_training, providers_for
from .artifacts import TrainingGraph, build_training_graph, generate
from .config import TrainConfig
from .export import export_trained
from .optim import Optimizer
from .sparsity import SparsityControl

log = logging.getLogger(__name__)
LOSS_WINDOW = 20  # the reported loss is the mean of the last LOSS_WINDOW batches (Caffe's average_loss)
# options a resumed run may change without a warning (they change no number the run computes)
_RESUME_FREE = {"display", "display_sparsity", "checkpoint_every", "checkpoint_path", "device"}


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after ``iteration`` iterations; ``checkpoint`` holds them (or None)."""

    def __init__(self, iteration: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at iteration {iteration}")
        self.iteration, self.checkpoint = iteration, checkpoint


@contextlib.contextmanager
def _deferred_sigint(flag: dict[str, bool]):
    """While active, a first SIGINT only sets ``flag["stop"]``; a second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def lr_at(cfg: TrainConfig, it: int, max_iter: int) -> float:
    """Learning rate for 0-based iteration ``it`` of ``max_iter``."""
    p = cfg.lr_policy
    if p == "fixed":
        return cfg.lr
    if p == "step":
        return cfg.lr * cfg.gamma ** (it // max(1, cfg.stepsize or 1))
    if p == "multistep":
        return cfg.lr * cfg.gamma ** sum(it >= s for s in cfg.stepvalue)
    frac = min(it / max(1, max_iter), 1.0)
    if p == "poly":
        return cfg.lr * (1.0 - frac) ** cfg.power
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))  # cosine


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _changed_options(saved: dict[str, Any] | None, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{option: (checkpoint's value, this run's)} for the options a resumed run changed."""
    if not saved:
        return {}
    now = _jsonable(cfg.to_dict())
    return {k: (saved[k], v) for k, v in now.items() if k in saved and k not in _RESUME_FREE and saved[k] != v}


def _output_rank(model: onnx.ModelProto) -> int | None:
    t = model.graph.output[0].type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else None


class Trainer:
    """One training run (``train()`` in :mod:`onnxsq.training` wraps it)."""

    def __init__(self, model: onnx.ModelProto, data: Dataset, cfg: TrainConfig, *,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.original, self.data, self.cfg, self.on_step = model, data, cfg, on_step
        self.task = cfg.task or data.task
        if cfg.task and cfg.task != data.task:
            raise DataError(f"{data.where}: --task {cfg.task} but the data holds {data.task} labels")
        rank = _output_rank(model)
        want = 2 if self.task == "classification" else 4
        if rank is not None and rank != want:
            raise UnsupportedModelError(
                f"{self.task} needs a model output of rank {want} (N×classes{'×H×W' if want == 4 else ''}), "
                f"the model's first output has rank {rank}")
        self.loader = Loader(data, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                             augment=self.task == "segmentation")
        bpe = self.loader.batches_per_epoch()
        self.max_iter = cfg.iters if cfg.iters is not None else max(1, round((cfg.epochs or 1) * bpe))
        self.graph: TrainingGraph = build_training_graph(model, same_rounding=False)
        dims = model.graph.output[0].type.tensor_type.shape.dim
        self.classes = dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else 0

    # -- setup ------------------------------------------------------------------------------------
    def _open(self, workdir: Path) -> None:
        providers = providers_for(self.cfg.device)
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.workdir = workdir
        state, self.module = self._module(self._artifact_graph(), workdir, self._extra_outputs())
        self._bind(state)
        self.opt = Optimizer(self.cfg.optimizer, self.w, momentum=self.cfg.momentum)
        self.slots = self.opt.slots
        self.sparsity = SparsityControl(self.cfg, self.w, self.graph.conv_weights, list(self.graph.weights),
                                        ops=self.graph.weights)
        self.iteration = 0

    def _bind(self, state) -> None:
        """Make ``state`` current; ``self.w`` become views of its parameter buffers (see optim).

        On a switch (QAT's second graph) the current values are copied into the new state first; no
        view of the old state's buffers outlives this call.
        """
        old = getattr(self, "w", None)
        self.state = state
        self.params = {n: state.parameters[n] for n in self.graph.trainable}
        if old is not None:
            for n, p in self.params.items():
                p.data = old[n]  # copies
        self.w = {n: p.data for n, p in self.params.items()}
        self._grads: dict[str, np.ndarray] = {}  # gradient views, taken at the first step

    def _module(self, graph: TrainingGraph, workdir: Path, extra_outputs: list[str]):
        """(CheckpointState, Module) of ``graph``'s training artifacts, generated into ``workdir``."""
        import_training()
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module

        train_path, ckpt_path = generate(graph, workdir, task=self.task, l1=self.cfg.l1,
                                         ignore_label=self.cfg.ignore_label,
                                         label_rank=1 if self.task == "classification" else 3,
                                         extra_outputs=extra_outputs)
        opts = self._session_options(ort)
        state = CheckpointState.load_checkpoint(str(ckpt_path))
        module = Module(str(train_path), state, None, self.device, opts)
        module.train()
        return state, module

    def _session_options(self, ort):
        """Deterministic kernels; intra-op threads that sleep between kernels instead of spinning (the
        digits bench with the default 2 threads on 2 shared cores: 14 ms CPU a step spinning, 7.5-9.7 not)."""
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.use_deterministic_compute = True
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.cfg.threads:
            opts.intra_op_num_threads = self.cfg.threads
        return opts

    # Hooks for subclasses (quantization-aware training): the graph to train, extra tensors the
    # training model returns after the loss, what to do with them, and extra checkpoint state.
    def _artifact_graph(self) -> TrainingGraph:
        return self.graph

    def _extra_outputs(self) -> list[str]:
        return []

    def _observe(self, x: np.ndarray, outputs: Any) -> Any:
        """The loss out of the training model's outputs (the loss alone without extra outputs)."""
        return outputs

    def _checkpoint_meta(self) -> dict[str, Any]:
        return {}

    def _restore_meta(self, meta: dict[str, Any]) -> None:
        pass

    # -- one iteration ----------------------------------------------------------------------------
    def _gradients(self) -> dict[str, np.ndarray]:
        """Views of onnxruntime's gradient buffers (the same memory every step), taken once."""
        if len(self._grads) < len(self.params):
            for n, p in self.params.items():
                if n not in self._grads and p.grad is not None:
                    self._grads[n] = p.grad
        return self._grads

    def _update(self, lr: float) -> None:
        t, weights, sp, grads = self.iteration + 1, self.graph.weights, self.sparsity, self._gradients()
        if self.opt.flat and len(grads) == len(self.opt.names):  # every array at once (see optim)
            names = self.opt.names
            self.opt.step_all(self.w, grads, lrs=tuple(lr * sp.lr_mult.get(n, 1.0) for n in names),
                              decays=tuple(self.cfg.weight_decay if n in weights else 0.0 for n in names), t=t,
                              masked=[n for n in names if n in sp.masks], mask=sp.apply_masks)
            return
        for n, g in grads.items():
            self.opt.step(n, self.w[n], g, lr=lr * sp.lr_mult.get(n, 1.0),
                          decay=self.cfg.weight_decay if n in weights else 0.0, t=t,
                          mask=(lambda *arrays, n=n: sp.apply_masks(n, *arrays)) if n in sp.masks else None)

    def _write_weights(self) -> None:
        """Nothing to copy: ``self.w`` are onnxruntime's buffers (a hook: QAT writes its scales here)."""

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        lr = lr_at(self.cfg, self.iteration, self.max_iter)
        self._check_labels(y)
        try:
            outputs = self.module(x, y)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors carry the useful first line
            raise DataError(f"{self.data.where}: training step failed on a batch x{tuple(x.shape)} "
                            f"y{tuple(y.shape)}: {first_line(exc)}") from None
        loss = self._observe(x, outputs)
        self._update(lr)
        self.iteration += 1
        self.sparsity.after_update(self.iteration, self.w)
        self._write_weights()
        self.module.lazy_reset_grad()
        self.last_lr = lr
        return float(np.asarray(loss).reshape(-1)[0])

    def _check_labels(self, y: np.ndarray) -> None:
        """DataError naming the label list for a label outside the model's classes (the ignore label aside)."""
        if not y.size or (y.min() >= 0 and (not self.classes or y.max() < self.classes)):
            return  # the common case: two reductions, no masked copy
        labels = y[y != self.cfg.ignore_label] if self.task == "segmentation" else y
        if labels.size and (labels.min() < 0 or (self.classes and labels.max() >= self.classes)):
            where = getattr(self.data, "label_where", self.data.where)  # the label list, not the images
            raise DataError(f"{where}: label {int(labels.max())} outside the model's "
                            f"{self.classes} classes (0..{self.classes - 1})")

    # -- checkpoints ------------------------------------------------------------------------------
    def values(self) -> dict[str, np.ndarray]:
        """Current values of every trainable and frozen parameter."""
        out = {n: w.copy() for n, w in self.w.items()}
        for n in self.graph.frozen:
            out[n] = np.array(self.state.parameters[n].data, copy=True)
        return out

    def save_checkpoint(self, path: Path) -> None:
        arrays = {f"param/{n}": v for n, v in self.values().items()}
        arrays.update({f"slot/{k}/{n}": v for k, d in self.slots.items() for n, v in d.items()})
        arrays.update({f"mask/{n}": m for n, m in self.sparsity.masks.items()})
        meta = {"iteration": self.iteration, "lr_mult": self.sparsity.lr_mult, "factor": self.sparsity.factor,
                "optimizer": self.cfg.optimizer, "stage": self.cfg.stage, "task": self.task,
                "config": _jsonable(self.cfg.to_dict()), **self._checkpoint_meta()}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        log.info("checkpoint at iteration %d: %s", self.iteration, path)

    def load_checkpoint(self, path: Path) -> None:
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
        except Exception as exc:  # noqa: BLE001 - numpy, zipfile and json raise several types
            raise InvalidOptionError(f"{path}: not an onnxsq training checkpoint ({exc})") from None
        if meta["optimizer"] != self.cfg.optimizer or meta["task"] != self.task or meta["stage"] != self.cfg.stage:
            raise InvalidOptionError(f"{path}: checkpoint of a {meta['stage']}/{meta['optimizer']}/{meta['task']} run "
                                     f"cannot resume a {self.cfg.stage}/{self.cfg.optimizer}/{self.task} run")
        self.resume_changes = _changed_options(meta.get("config"), self.cfg)
        for key, (was, now) in self.resume_changes.items():
            log.warning("resuming with %s %s where the checkpoint's run had %s: the result will differ from an "
                        "uninterrupted run", key, now, was)
        names = set(self.graph.trainable) | set(self.graph.frozen)
        have = {k.split("/", 1)[1] for k in arrays if k.startswith("param/")}
        if have != names:
            raise InvalidOptionError(f"{path}: checkpoint parameters do not match this model")
        for n in self.graph.trainable:
            self.w[n][...] = arrays[f"param/{n}"]
        for n in self.graph.frozen:
            self.state.parameters[n].data = arrays[f"param/{n}"]
        for k, d in self.slots.items():
            for n in d:
                d[n][...] = arrays[f"slot/{k}/{n}"]
        self.sparsity.masks = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("mask/")}
        self.sparsity.lr_mult = {k: float(v) for k, v in meta["lr_mult"].items()}
        self.sparsity.factor = float(meta["factor"])
        self.iteration = int(meta["iteration"])
        self._restore_meta(meta)
        self._write_weights()
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, *, resume: Path | None = None, checkpoint: Path | None = None) -> tuple[onnx.ModelProto, Report]:
        """Train; ``checkpoint`` is written every ``checkpoint_every`` iterations and on Ctrl-C."""
        with tempfile.TemporaryDirectory(prefix="onnxsq-train-") as tmp:
            self._open(Path(tmp))
            if resume is not None:
                self.load_checkpoint(resume)
            start = self.iteration
            t0, self.last_lr = time.perf_counter(), lr_at(self.cfg, start, self.max_iter)
            losses: list[float] = []
            images = self._loop(losses, checkpoint) if start < self.max_iter else 0
            elapsed = time.perf_counter() - t0
            values = self.values()
        model = export_trained(self.original, values)
        return model, self._report(losses, images, elapsed, start)

    def _loop(self, losses: list[float], checkpoint: Path | None) -> int:
        """Iterations from ``self.iteration`` to ``max_iter``; the number of images seen."""
        bpe, start, images = self.loader.batches_per_epoch(), self.iteration, 0
        flag, self._sparsity = {"stop": False}, None
        with _deferred_sigint(flag), contextlib.closing(self.loader.stream(start // bpe, start % bpe)) as batches:
            for _e, _b, x, y in batches:
                losses.append(self.step(x, y))
                images += len(x)
                self._after_step(losses, checkpoint)
                if self.iteration >= self.max_iter:
                    break
                if flag["stop"]:
                    if checkpoint is not None:
                        self.save_checkpoint(checkpoint)
                    raise TrainingInterrupted(self.iteration, checkpoint)
        return images

    def _after_step(self, losses: list[float], checkpoint: Path | None) -> None:
        cfg, it, loss = self.cfg, self.iteration, losses[-1]
        if not math.isfinite(loss):
            raise InvalidOptionError(f"the loss became {loss} at iteration {it}; lower --lr")
        smooth = float(np.mean(losses[-LOSS_WINDOW:]))  # what the summary's final_loss reports
        due = bool(cfg.display) and (it % cfg.display == 0 or it == self.max_iter)
        if due or cfg.stage in ("l1", "sparse") or self._sparsity is None:  # else it moves only by chance
            self._sparsity = self.sparsity.total_sparsity(self.w)
        sparsity = self._sparsity
        shown = self.shows_sparsity(sparsity)
        if due:
            log.info("iter %d/%d  loss %.4f  lr %.4g%s", it, self.max_iter, smooth, self.last_lr,
                     f"  sparsity {sparsity:.4f}" if shown else "")
        if cfg.display_sparsity and it % cfg.display_sparsity == 0:
            per = ", ".join(f"{n} {s:.3f}" for n, s in self.sparsity.layer_sparsity(self.w).items())
            log.info("iter %d sparsity %.4f (conv weights: Conv/ConvTranspose): %s", it, sparsity, per)
        if checkpoint is not None and cfg.checkpoint_every and it % cfg.checkpoint_every == 0:
            self.save_checkpoint(checkpoint)
        if self.on_step is not None:
            self.on_step({"iteration": it, "max_iter": self.max_iter, "loss": smooth, "batch_loss": loss,
                          "lr": self.last_lr, "sparsity": sparsity if shown else None, "display": cfg.display,
                          "stage": cfg.stage})

    def shows_sparsity(self, sparsity: float) -> bool:
        """Whether progress lines show the conv sparsity: in the stages that make zeros, or where there are any."""
        return self.cfg.stage in ("l1", "sparse") or sparsity > 0

    def _report(self, losses: list[float], images: int, elapsed: float, start: int) -> Report:
        report = Report("train")
        layer = self.sparsity.layer_sparsity(self.w)  # conv weights: Conv and ConvTranspose
        for n, s in layer.items():
            report.add(n, self.graph.weights.get(n, "Conv"), "trained", "", sparsity=round(s, 6),
                       masked=n in self.sparsity.masks, lr_mult=self.sparsity.lr_mult.get(n, 1.0))
        for node, op, how in self.graph.rewrites:
            report.add(node, op, "skipped" if how.startswith("kept") else "rewritten for training", how)
        tail = losses[-LOSS_WINDOW:] if losses else [float("nan")]
        report.summary.update({
            "stage": self.cfg.stage, "task": self.task, "device": self.device, "optimizer": self.cfg.optimizer,
            "iterations": self.iteration, "resumed_from": start, "batch_size": self.loader.batch_size,
            "final_loss": float(np.mean(tail)), "final_lr": self.last_lr,
            "seconds": round(elapsed, 3), "images_per_s": round(images / elapsed, 1) if elapsed > 0 else None,
            "conv_sparsity": round(self.sparsity.total_sparsity(self.w), 6),
        })
        if getattr(self, "resume_changes", None):
            report.summary["resume_changed"] = sorted(self.resume_changes)
        short = self.sparsity.shortfall(self.w)
        if short:
            report.warnings.append(short)
        return report
