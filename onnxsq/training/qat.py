"""Quantization-aware training (``onnxsq train --stage qat``): the original's Stage 7, done as training.

The float model (BatchNormalization included) is folded first, exactly as ``onnxsq quantize`` does
(:func:`onnxsq.passes.fold_batchnorm.fold_batchnorm`). Then, on the folded model:

1. Iterations ``< quantization_start_iter`` train in float. The training model also returns every
   tensor the quantize pass would quantize (:mod:`onnxsq.training.qat_graph`), and each batch updates
   its streaming :class:`~onnxsq.calibration.stats.TensorStats` (the quantize pass's statistics).
2. From ``quantization_start_iter`` on, the training graph carries ``FakeQuant`` nodes on those
   activations and on the weights: the forward pass runs on power-of-two fixed-point values computed
   from the float *shadow* weights, and the gradient passes straight through (zero where a value clips)
   to the shadow weights, which the optimizer updates. Every ``quant_update_every`` iterations the
   shifts are recomputed and written into the checkpoint state's scale parameters: each weight's from
   its current shadow values (``pow2.weight_shift``, the ``weight_method`` quantize uses), each
   activation group's from its statistics, which keep following the (pre-quantization) values during
   QAT (``quant_method``: quantize's estimators; a group takes its coarsest member's shift, as in the
   quantize pass); each bias's is ``shift_in + shift_w`` (int32, as exported). A group's signedness is
   fixed when quantization starts (never negative → unsigned).
3. Export: the trained shadow weights go into the folded model, and the quantize pass runs with every
   activation and weight shift given (nothing is calibrated), so the output has quantize's QDQ format,
   placement, int32 biases at ``scale_in * scale_w`` and parameters file.

Sparsity masks (``weight_connect_mode``, default WEIGHT_DISCONNECTED_ELTWISE in this stage) act on the
shadow weights, and FakeQuant with zero point 0 maps 0 to 0: zeros stay exactly zero in the export.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..calibration import pow2
from ..calibration.stats import HIST_METHODS, TensorStats, choose_shift
from ..data.loader import Dataset, Loader
from ..errors import InvalidOptionError
from ..model_io import default_opset
from ..params import TensorQuant
from ..passes.quantize.params import check_bits, constant_shift
from ..report import Report
from .config import TrainConfig
from .loop import Trainer
from .qat_graph import bias_key, float_graph, plan_for, qat_graph, scale_name

log = logging.getLogger(__name__)


def fold_first(model: onnx.ModelProto, report: Report) -> onnx.ModelProto:
    """Fold as the quantize pass does (BatchNorm, exporters' affine ops, computed weights); record it."""
    from ..passes.fold_batchnorm import fold_batchnorm, summarize_for_quantize

    folded, frep = fold_batchnorm(model)
    summary, warnings = summarize_for_quantize(frep, context="train with batch statistics and stay float")
    report.summary.setdefault("batchnorm_folded_first", 0)
    report.summary.update(summary)
    report.warnings.extend(warnings)
    return folded


class QATTrainer(Trainer):
    """A :class:`~onnxsq.training.loop.Trainer` whose graph switches to fake-quantized mid-run."""

    def __init__(self, model: onnx.ModelProto, data: Dataset, cfg: TrainConfig, *,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.qat_report = Report("train")
        folded = fold_first(model, self.qat_report)
        super().__init__(folded, data, cfg, on_step=on_step)
        self.bits = int(cfg.qat("bits"))
        self.wbits = int(cfg.weight_bits or self.bits)
        check_bits(self.bits, self.wbits, default_opset(folded))
        start = cfg.quantization_start_iter
        self.start = int(start) if start is not None else max(1, self.max_iter // 10)
        self.qp = plan_for(folded, cfg.quant_exclude)
        if not self.qp.plan.activations and not self.qp.plan.weights:
            raise InvalidOptionError("nothing for quantization-aware training: no Conv, ConvTranspose, Gemm, MatMul, "
                                     "Add or Concat with float32 data")
        hist = cfg.qat("quant_method") in HIST_METHODS
        self.stats = {a: TensorStats(histogram=hist) for a in self.qp.plan.activations}
        self.observed = {a: a for a in self.qp.produced}  # activation → tensor its statistics read
        self.signed: dict[str, bool] = {}  # group root → signed, fixed when quantization starts
        self.quantizing = False
        self.quantized_from: int | None = None

    # -- graphs ------------------------------------------------------------------------------------
    def _artifact_graph(self):
        return float_graph(self.graph)

    def _extra_outputs(self) -> list[str]:
        return list(self.observed.values())

    def _start_quantizing(self) -> None:
        """Switch the training model to the fake-quantized graph; weights and buffers carry over."""
        plan = self.qp.plan
        if not self.signed:
            self.signed = {root: self._group_signed(plan.members(root)) for root in plan.group_roots()}
        graph, observed, self.scale_params = qat_graph(self.graph, self.qp, self.signed, self.bits, self.wbits)
        old = self.state
        state, module = self._module(graph, Path(self.workdir) / "qat", list(observed.values()))
        for n in self.graph.frozen:  # BN left unfolded: its running statistics
            state.parameters[n].data = np.array(old.parameters[n].data, copy=True)
        self._bind(state)  # the trained values move into the new state's buffers
        self.module = module
        self.observed = observed
        self.quantizing, self.scales_written = True, False
        if self.quantized_from is None:
            self.quantized_from = self.iteration
        missing = [a for a in self.qp.produced if a not in observed]
        if missing:
            self.qat_report.warnings.append(f"no producer found in the training graph for {', '.join(missing)}: not "
                                            "fake-quantized in training; exported with the ranges collected before")
        log.info("iteration %d: fake quantization starts (%d activations, %d weights, %d-bit activations, "
                 "%d-bit weights)", self.iteration, len(plan.activations), len(self.qp.weights), self.bits, self.wbits)
        self._write_weights()

    # -- the ranges --------------------------------------------------------------------------------
    def _value(self, name: str) -> np.ndarray:
        return self.w[name] if name in self.w else self.qp.consts[name]

    def _group_signed(self, members: list[str]) -> bool:
        for m in members:
            if m in self.qp.consts:
                if self._value(m).size and float(np.min(self._value(m))) < 0:
                    return True
            elif not self.stats[m].nonnegative:
                return True
        return False

    def group_shift(self, root: str) -> int:
        """The shift of a shared-scale group: its coarsest member's (every member fits), as quantize."""
        signed, shifts = self.signed[root], []
        for m in self.qp.plan.members(root):
            if m in self.qp.consts:
                shifts.append(constant_shift(self._value(m), self.bits, signed)[0])
            elif self.stats[m].batches:
                shifts.append(choose_shift(self.stats[m], self.cfg.qat("quant_method"), self.bits, signed=signed,
                                           percentile=self.cfg.qat("percentile"))[0])
        return min(shifts) if shifts else self.bits - 1

    def weight_shift(self, name: str) -> int:
        return int(pow2.weight_shift(self._value(name), self.wbits, method=self.cfg.qat("weight_method")))

    def _write_weights(self) -> None:
        super()._write_weights()
        if not self.quantizing:
            return
        every = int(self.cfg.qat("quant_update_every"))
        if self.scales_written and self.iteration % every:
            return
        self.scales_written = True
        params, plan = self.state.parameters, self.qp.plan
        shifts = {root: self.group_shift(root) for root in plan.group_roots()}
        shifts.update({w: self.weight_shift(w) for w in self.qp.weights})
        for use in plan.weights:
            if use.bias is not None:  # the accumulator's scale: shifts add
                shifts[bias_key(use.bias)] = shifts[plan.groups[use.input]] + shifts[use.weight]
        for key, shift in shifts.items():
            if scale_name(key) in self.scale_params:
                params[scale_name(key)].data = np.array(pow2.scale_of(shift), np.float32)

    # -- one iteration -----------------------------------------------------------------------------
    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        if not self.quantizing and self.iteration >= self.start:
            self._start_quantizing()
        return super().step(x, y)

    def _observe(self, x: np.ndarray, outputs: Any) -> Any:
        loss, *values = outputs if isinstance(outputs, (list, tuple)) else (outputs,)
        for a in self.qp.plan.activations:
            if a in self.qp.graph_inputs:
                self.stats[a].update(x)
        for a, v in zip(self.observed, values):
            self.stats[a].update(v)
        return loss

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint_meta(self) -> dict[str, Any]:
        return {"qat": {"stats": {a: s.to_dict() for a, s in self.stats.items()}, "signed": self.signed,
                        "quantized_from": self.quantized_from, "start": self.start}}

    def _restore_meta(self, meta: dict[str, Any]) -> None:
        qat = meta.get("qat")
        if qat is None or set(qat["stats"]) != set(self.stats):
            raise InvalidOptionError("the checkpoint is not of a QAT run of this model")
        self.stats = {a: TensorStats.from_dict(d) for a, d in qat["stats"].items()}
        self.signed = {k: bool(v) for k, v in qat["signed"].items()}
        self.quantized_from = qat["quantized_from"]
        if self.quantized_from is not None and not self.quantizing:
            self._start_quantizing()

    # -- export ------------------------------------------------------------------------------------
    def final_params(self) -> dict[str, TensorQuant]:
        """Every activation, constant operand and weight's parameters, from the final state."""
        plan = self.qp.plan
        if not self.signed:  # training ended before quantization started
            self.signed = {root: self._group_signed(plan.members(root)) for root in plan.group_roots()}
        how = f"qat-{self.cfg.qat('quant_method')}"
        out: dict[str, TensorQuant] = {}
        for root in plan.group_roots():
            shift, signed = self.group_shift(root), self.signed[root]
            for m in plan.members(root):
                st = self.stats.get(m)
                rng = (st.min, st.max) if st is not None and st.batches else None
                if m in self.qp.consts:
                    v = self._value(m)
                    rng = (float(v.min()), float(v.max())) if v.size else None
                out[m] = TensorQuant(m, "activation", self.bits, signed, shift, None, rng, how)
        for w in self.qp.weights:
            v = self._value(w)
            out[w] = TensorQuant(w, "weight", self.wbits, True, self.weight_shift(w), None,
                                 (float(v.min()), float(v.max())) if v.size else None,
                                 f"qat-{self.cfg.qat('weight_method')}")
        return out

    def run(self, *, resume: Path | None = None, checkpoint: Path | None = None,
            params_out: str | os.PathLike | None = None) -> tuple[onnx.ModelProto, Report]:
        trained, report = super().run(resume=resume, checkpoint=checkpoint)
        return self.export(trained, report, params_out)

    def export(self, trained: onnx.ModelProto, report: Report, params_out: str | os.PathLike | None
               ) -> tuple[onnx.ModelProto, Report]:
        from ..passes.quantize import QuantizeConfig, quantize

        params = self.final_params()
        # what was trained: one shift per tensor (QAT's placement), no equalization or forward folds (they
        # would rescale the trained weights and drop trained tensors), BN already folded
        cfg = QuantizeConfig(bits=self.bits, weight_bits=self.wbits, exclude=self.cfg.quant_exclude,
                             method=self.cfg.qat("quant_method"), weight_method=self.cfg.qat("weight_method"),
                             fold_batchnorm=False, report_samples=8, per_channel=False, equalize=False,
                             fold_forward=False)
        batches = Loader(self.data, 8).epoch()
        x, _ = next(batches)  # the per-layer SQNR report's samples (no calibration: every shift is given)
        batches.close()
        feeds = [{self.graph.input_name: x}]
        quantized, qrep = quantize(trained, feeds, config=cfg, params=params, params_out=params_out)
        report.candidates.extend(qrep.candidates)
        report.warnings.extend(self.qat_report.warnings + qrep.warnings)
        s = report.summary
        s.update(self.qat_report.summary)
        s.update({"quantization_start_iter": self.start, "quantized_from_iter": self.quantized_from,
                  "bits": self.bits, "weight_bits": self.wbits, "quant_method": self.cfg.qat("quant_method"),
                  "weight_method": self.cfg.qat("weight_method")})
        for key in ("activations_quantized", "weights_quantized", "layers_kept_float", "output_sqnr_db",
                    "top1_agreement", "opset_raised", "params_file"):
            if key in qrep.summary:
                s[key] = qrep.summary[key]
        if self.quantized_from is None:
            report.warnings.append(f"training ended at iteration {self.iteration}, before quantization_start_iter "
                                   f"{self.start}: the model was trained in float and quantized with the ranges "
                                   "collected (post-training quantization)")
        return quantized, report
