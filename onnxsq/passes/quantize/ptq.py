"""quantize: post-training power-of-two int8 quantization in QDQ form, with streaming calibration.

Scheme (the original's Stage 7, without its weaknesses; ``spec/algorithms.md`` §3): every
QuantizeLinear/DequantizeLinear scale is ``2**-shift`` (a pure shift), zero points are 0 so exact
zeros stay zero. Weights are symmetric signed (per tensor, or per output channel with
``per_channel``, each channel's scale a power of two), activations unsigned when calibration never
saw a negative value (after ReLU) and signed otherwise; biases are int32 at ``scale_in * scale_w``
(itself a power of two), so requantizing an accumulator is a right shift by
``shift_in + shift_w - shift_out``. Placement: :mod:`onnxsq.passes.quantize.placement`; writing the
nodes: :mod:`onnxsq.passes.quantize.insert`; statistics and estimators: :mod:`onnxsq.calibration`.

Steps: fold BatchNormalization (if any is foldable) → raise the opset only if QDQ needs it (10, 13 for
per-channel) → plan → calibrate the planned activations in one streaming pass (parameters given in
``params`` are used instead) → per shared-scale group, the coarsest member shift (so every member
fits) → weights and biases (bias correction) → insert QDQ → measure each quantized tensor's SQNR
against float on the first ``report_samples`` calibration samples, plus output SQNR and top-1
agreement; clipped fractions come from the statistics of every calibration sample where they tell.

Defaults live in :class:`.config.QuantizeConfig`: per-channel weights at the MSE shift (of the fitting
shift and two finer ones, the smallest exact squared error on the weights), activations by the ``auto``
estimator (shift and signedness of least histogram error), power-of-two equalization, free scales carried
by the weights (:mod:`.align`) and bias correction (:mod:`.bias`: the weights' rounding error has a
per-channel mean that, times the input's mean, offsets every output pixel). Their gains on the real-model
zoo: the README's fidelity table (``bench/fidelity.py``). The report runs on ``report_samples`` samples.

Time and memory: calibration is onnxruntime running the model with statistics outputs. The rest is kept
small by working once per weight in float32 where that is exact (integers computed once for bias
correction and QDQ; see :mod:`onnxsq.calibration.pow2`), by reading and writing the model piece by piece
(:mod:`onnxsq.proto_stream`), and by returning freed memory to the OS between phases
(:mod:`onnxsq.memory`). A session holding the weights was tried and dropped (the README's benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...calibration import sources
from ...calibration.collect import Progress, collect_stats, runnable
from ...calibration.stats import HIST_METHODS
from ...calibration.units import unit_batches
from ...errors import InvalidOptionError, UnsupportedModelError
from ...graph import const_value, copy_without_graph, export_like, import_graph
from ...memory import release_memory
from ...model_io import ModelLike, default_opset, load_model, skeleton
from ...params import TensorQuant, read_params, write_params
from ...report import Report
from ..equalize import equalize_graph
from ..fold_constants import fold_constants_graph, lift_constant_nodes, merge_into
from ..fold_forward import fold_forward_graph
from .align import align_scales, checked, unscale_outputs
from .bias import means_wanted
from .calib_crops import crop_stats, crops_checked
from .config import QuantizeConfig
from .eval import evaluate
from .insert import insert_qdq_graph
from .offset import offset_outputs
from .opset import check_bits_at, ensure_opset
from .params import QuantizeContext, known_clipped, resolve_pair_safe, resolve_params
from .placement import plan_qdq
from .pooled import headroom_for
from .report import fill_report, with_report_crops
from .shift_conv import shifts_as_convs
from .softmax_range import SAMPLES as SOFTMAX_SAMPLES
from .softmax_range import realigned_shifts, softmax_reads, softmax_shifts
from .target import own_stats, quantize_for_target
from .through import reader_functions
from .wide import drop_unmatched, needed_opset, widen

log = logging.getLogger(__name__)

PASS_NAME = "quantize"
RELEASE_BYTES = 32 << 20  # weights from this size on: return freed memory to the OS between phases


def quantize(model: ModelLike, calib: Any = None, *, config: QuantizeConfig | None = None,
             params: str | os.PathLike | Mapping[str, TensorQuant] | None = None,
             progress: Progress | None = None, params_out: str | os.PathLike | None = None,
             stats: Sequence[Any] | None = None, jobs: int = 1) -> tuple[onnx.ModelProto, Report]:
    """Quantize ``model`` with power-of-two QDQ; returns ``(quantized model, report)``.

    ``calib``: a directory of images or ``.npy``/``.npz``, a ``.npz`` file, ``module.py:function``, or an
    iterable of ``{input_name: array}`` feeds. ``params``: a parameters file (or dict) whose tensors skip
    calibration; ``params_out``: write every quantized tensor's parameters there. ``progress(samples_done,
    total, stage)`` is called per batch. ``stats``: calibration statistics (``.stats`` files or
    :class:`~onnxsq.calibration.stats_file.CalibrationStats`, e.g. :func:`.shards.calibrate`'s) used instead
    of calibrating (``calib`` then only feeds the report); ``jobs``: calibrate in that many local processes
    (:mod:`.shards`; the same result). Phases: load and fold, plan, calibrate, align, resolve, insert, export.
    """
    cfg = (config or QuantizeConfig()).resolved()  # the --effort preset over the options left at default
    cfg.validate()
    if cfg.finetune:  # the last step runs around the pass (which it calls with finetune off)
        return _finetuned(model, calib, cfg, params, progress, params_out, stats, jobs)
    ctx, graph, meta, opset, large, clock, float_model, float_weights, stats = _started(
        model, calib, cfg, params, progress, stats, jobs)
    report = ctx.report
    kept, samples = _calibrate(ctx, graph, calib, float_model, float_weights, progress, clock, stats)
    crops = crop_stats(ctx, float_model, float_weights, kept, samples)  # checked at the end (.calib_crops)
    kept = with_report_crops(ctx, kept)
    if align_scales(ctx, graph, float_model, float_weights, params_out is not None):  # free scales (.align)
        float_model, float_weights = runnable(graph, meta)
        if ctx.softmax_factor:  # their Softmax-error shifts, again on the aligned values
            realigned_shifts(ctx)
    tparams = _resolve(ctx, graph, float_model, float_weights, kept)
    clock.lap("resolve")
    insert_qdq_graph(graph, tparams, opset, ctx.qweights, offset=ctx.cfg.carrier == "uint8")
    ctx.qweights = {}
    quantized_runnable = runnable(graph, meta) if kept else None
    clock.lap("insert qdq")
    if params_out is not None:
        report.summary["params_file"] = str(write_params(tparams, params_out))
    calib_s = clock.total()
    evaluation = _measure(ctx, float_model, float_weights, quantized_runnable, kept, tparams, progress, clock)
    sens = _sensitivity(ctx, float_model, float_weights, kept, tparams, progress, clock)
    if sens is not None and sens.keep_float:  # again from this pass's statistics; its arrays go first
        reuse, graph, quantized_runnable, float_model, float_weights = (
            own_stats(ctx, float_model, float_weights, samples), None, None, None, None)
        return crops_checked(model, kept, cfg, (params, progress, params_out), quantize_for_target(
            model, kept, cfg, params, progress, params_out, sens, reuse), crops)
    # Exported last, after the float weights are gone (the peak is then the quantized model alone)
    recheck = own_stats(ctx, float_model, float_weights, samples) if evaluation and ctx.unaligned and \
        cfg.align_check else None
    del float_model, float_weights, quantized_runnable
    ctx.unaligned = None
    if large:
        release_memory()
    quantized, graph = _export(ctx, graph, meta, clock), None
    fill_report(ctx, tparams, evaluation, samples, calib_s + clock.laps["export"], sens)
    report.summary["seconds"] = round(clock.total(), 3)
    log.debug("quantize phases (s): %s", clock.laps)
    args = (params, progress, params_out)
    return crops_checked(model, kept, cfg, args, checked(model, kept, cfg, args, (quantized, report), recheck), crops)


def _started(model: ModelLike, calib: Any, cfg: QuantizeConfig, params: Any, progress: Progress | None,
             stats: Sequence[Any] | None, jobs: int) -> tuple[Any, ...]:
    """Load, fold and plan; with ``jobs > 1`` the calibration shards run meanwhile (:mod:`.shards`)."""
    pending = None
    if jobs > 1 and stats is None:
        from .shards import start_jobs

        pending = start_jobs(model, calib, cfg, jobs)  # the shards run while this process loads and plans
    with pending or contextlib.nullcontext():  # a failure here stops the shard processes
        ctx, graph, meta, opset, large, clock = prepare(model, cfg, params)
        float_model, float_weights = runnable(graph, meta)
        clock.lap("split weights")
        stats = stats if pending is None else pending.result(progress)
    return ctx, graph, meta, opset, large, clock, float_model, float_weights, stats


def _export(ctx: QuantizeContext, graph: gs.Graph, meta: onnx.ModelProto, clock: _Clock) -> onnx.ModelProto:
    unscale_outputs(graph, ctx)  # aligned graph outputs: their float values again (.align)
    quantized = export_like(graph, meta)
    clock.lap("export")
    return quantized


def _finetuned(model: ModelLike, calib: Any, cfg: QuantizeConfig, *args: Any) -> tuple[onnx.ModelProto, Report]:
    """The pass, then label-free fine-tuning (:mod:`onnxsq.training.finetune`; onnxruntime-training only)."""
    from ...training.finetune import quantize_and_finetune

    return quantize_and_finetune(model, calib, cfg, *args)


def prepare(model: ModelLike, cfg: QuantizeConfig, params: Any = None
            ) -> tuple[QuantizeContext, gs.Graph, onnx.ModelProto, int, bool, _Clock]:
    """Load and fold ``model``, plan its QDQ pairs: ``(context, graph, the model without its graph,
    opset, whether its weights are large, the phase clock)``."""
    clock, report = _Clock(), Report(PASS_NAME)
    graph, meta, opset, cfg = _load_and_fold(model, cfg, report, clock)  # cfg: per tensor if the opset forced it
    cfg = resolve_pair_safe(cfg, report)  # 7-bit paired weights or not: as this onnxruntime multiplies
    if cfg.integer_only and cfg.fuse_activations != "none":
        report.warnings.append(f"--fuse-activations {cfg.fuse_activations} ignored with --integer-only (its "
                               "look-up tables read each layer's 8-bit output)")
    plan = plan_qdq(graph, per_channel=cfg.per_channel, exclude=tuple(cfg.exclude), integer_only=cfg.integer_only,
                    ort_kernels=cfg.ort_kernels, fuse=cfg.fuse_activations)
    clock.lap("plan")
    # From here on the weights live once, as the numpy arrays of ``graph`` (loading them here ends
    # its references into the proto, which then goes); onnxruntime sessions run skeletons fed with them.
    ctx = QuantizeContext(cfg, report, plan, _constants(graph), given=_given(params, report))
    if cfg.through_readers:  # shifts chosen by the error their readers' function sees (.through, .softmax_range)
        ctx.through = reader_functions(graph, plan.activations)
        ctx.softmax = softmax_reads(graph, plan.activations, opset)
    widen(ctx)
    ctx.headroom = headroom_for(graph, [a for a in plan.activations if a not in ctx.given], plan.bounded,
                                cfg.pooled_headroom)  # a given shift is kept as given
    if ctx.headroom:
        report.summary["pooled_headroom"] = {"bits": cfg.pooled_headroom, "tensors": len(ctx.headroom)}
    large = sum(v.nbytes for v in ctx.consts.values()) >= RELEASE_BYTES
    if large:  # a full garbage collection costs ~15 ms: only worth it when there is much to hand back
        release_memory()  # the parsed model is garbage now; return it before calibration allocates
    return ctx, graph, meta, opset, large, clock


def _load_and_fold(model: ModelLike, cfg: QuantizeConfig, report: Report,
                   clock: _Clock) -> tuple[gs.Graph, onnx.ModelProto, int, QuantizeConfig]:
    """Load ``model``, fold its constant computations and (``fold_batchnorm``) its BNs and affine ops in
    place, raise its opset where the QDQ form needs it: (graph, the model without its graph, opset, the
    config the opset allows: per tensor where per-channel weights' opset could not be reached)."""
    original = load_model(model)
    check_bits_at(original, cfg)
    clock.lap("load")
    _infer_shapes(original)  # typed tensors: planning tells float tensors apart, folding needs ranks
    graph = import_graph(original)
    # weights computed in the graph (ConstantOfShape, Unsqueeze of constants) become weights first
    merge_into(report, fold_constants_graph(graph))
    lift_constant_nodes(graph)  # bias correction and int8 weights write constants: Constant nodes ignore it
    if cfg.fold_batchnorm:
        _fold_first(graph, original, report, cfg.per_channel)  # in place: no export/import round trip
        clock.lap("fold")
    if cfg.fold_forward:  # scale/shift chains before Conv layers into them (learnable affine blocks)
        report.summary["forward_folded"] = fold_forward_graph(graph).summary["folded"]
    if cfg.equalize:  # after folding: a BN between two convs no longer hides the pair
        report.summary["equalized_pairs"] = equalize_graph(graph).summary["equalized"]
        clock.lap("equalize")
    # Add(relu'd x, b) as a depthwise Conv; off with fold_forward (a trained graph re-quantized keeps its tensors)
    if cfg.fold_forward and cfg.carrier == "native" and (shifted := shifts_as_convs(graph)):
        report.summary["shifts_as_convs"] = shifted
    if cfg.offset_outputs and cfg.fold_forward and not (cfg.integer_only or cfg.ort_kernels) and \
            cfg.fuse_activations != "all":  # (.offset)
        lifted, refused = offset_outputs(graph)
        if lifted:
            report.summary["offset_outputs"] = len(lifted)
        for tensor, why in refused.items():  # (every SiLU / HardSwish output left signed, with its reason)
            report.add(tensor, "offset", "skipped", f"stays signed, not lifted: {why}")
    cfg = drop_unmatched(cfg, graph, report)
    if default_opset(original) < needed_opset(cfg)[0]:
        original, cfg = ensure_opset(export_like(graph, original), report, cfg)
        _infer_shapes(original)
        graph = import_graph(original)
    return graph, copy_without_graph(original), default_opset(original), cfg


def _constants(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Every constant of ``graph`` by name, loaded (which ends the graph's references into the proto)."""
    return {t.name: v for t in graph.tensors().values() for v in [const_value(t)] if v is not None}


def _calibrate(ctx: QuantizeContext, graph: gs.Graph, calib: Any, float_model: onnx.ModelProto,
               float_weights: dict[str, np.ndarray], progress: Progress | None,
               clock: _Clock, stats: Sequence[Any] | None = None) -> tuple[list[dict], int]:
    """Statistics (``ctx.stats``, ``ctx.means``) of the tensors without given parameters, on ``calib``;
    returns the samples kept for the report and how many samples were read. Every sample when anything
    is calibrated (ranges, or bias correction's input means); else only the report's samples, and none
    at all without a report."""
    cfg, report, plan = ctx.cfg, ctx.report, ctx.plan
    if not plan.activations and not plan.weights:
        report.warnings.append("nothing to quantize: no Conv, ConvTranspose, Gemm, MatMul, Add or Concat "
                               "with float32 data")
    todo = [t for t in plan.activations if t not in ctx.given]
    have_data = calib is not None or stats is not None
    ctx.means = (means_wanted(plan.weights, ctx.given, graph, have_data) if cfg.bias_correction else {})
    keep = max(cfg.report_samples, SOFTMAX_SAMPLES if ctx.softmax else 0)
    if stats is not None:
        from .shards import from_stats

        kept, samples = from_stats(ctx, todo, stats, calib, float_model, float_weights, clock, keep=keep)
        return softmax_shifts(ctx, float_model, float_weights, kept), samples
    full = bool(todo or ctx.means)
    if calib is not None and not full and cfg.report_samples == 0:
        report.summary["calibration_data"] = "not read: every tensor has given parameters and the report is off"
        return [], 0
    if not todo and calib is None:
        return [], 0
    if calib is None:
        raise InvalidOptionError(f"--calib is required: {len(todo)} tensor(s) have no given parameters "
                                 f"(e.g. {todo[0]!r})")
    source = open_calib(calib, cfg, float_model, float_weights)
    count = cfg.calib_count if full else min(cfg.calib_count or cfg.report_samples, cfg.report_samples)
    total = source.total if count is None else min(count, source.total or count)
    batches = unit_batches(source, batch_size=cfg.batch_size, count=count)
    ctx.stats, kept, samples = collect_stats(float_model, todo, batches, histogram=cfg.method in HIST_METHODS,
                                             progress=progress, total=total, keep=keep,
                                             weights=float_weights, means=ctx.means)
    report.warnings.extend(source.warnings)
    clock.lap("calibrate")
    return softmax_shifts(ctx, float_model, float_weights, kept), samples


def open_calib(calib: Any, cfg: QuantizeConfig, float_model: onnx.ModelProto,
               float_weights: Mapping[str, np.ndarray]) -> sources.CalibrationSource:
    return calib if isinstance(calib, sources.CalibrationSource) else \
        sources.open_source(calib, float_model, preprocess=cfg.preprocess, exclude=float_weights.keys())


def _resolve(ctx: QuantizeContext, graph: gs.Graph, float_model: onnx.ModelProto,
             float_weights: dict[str, np.ndarray], kept: list[dict]) -> dict[str, TensorQuant]:
    """Every tensor's parameters (the weights' rounding measured on ``kept`` where asked for); the
    corrected biases are written into ``graph`` (new arrays: the float model keeps its own), and the
    float constants are let go."""
    if ctx.cfg.weight_rounding == "gptq" and kept:  # checked against nearest rounding on the whole model
        from .rounding import resolve_gptq

        tparams = resolve_gptq(ctx, graph, float_model, float_weights, kept)
    else:
        if ctx.cfg.weight_rounding == "gptq":
            ctx.report.warnings.append("--weight-rounding gptq measures on the report samples; there are none: "
                                       "weights are rounded to nearest")
        tparams = resolve_params(ctx)
    if ctx.corrected:
        tensors = graph.tensors()
        for name, values in ctx.corrected.items():
            tensors[name].values = values
        ctx.report.summary["bias_corrected"] = len(ctx.corrected)
    ctx.consts, ctx.corrected = {}, {}
    return tparams


def _measure(ctx: QuantizeContext, float_model: onnx.ModelProto, float_weights: dict[str, np.ndarray],
             quantized: tuple[onnx.ModelProto, dict[str, np.ndarray]] | None, kept: list[dict],
             tparams: dict[str, TensorQuant], progress: Progress | None, clock: _Clock) -> Any:
    """The per-layer and per-output error on the kept samples (None without them)."""
    if not kept:
        if ctx.cfg.report_samples > 0:
            ctx.report.warnings.append("no calibration data: per-layer SQNR not measured")
        return None
    q_model, q_weights = quantized
    evaluation = evaluate(float_model, q_model, ctx.plan.activations, tparams, kept, progress=progress,
                          float_weights=float_weights, q_weights=q_weights, clipped=known_clipped(ctx, tparams))
    clock.lap("report")
    return evaluation


def _sensitivity(ctx: QuantizeContext, float_model: onnx.ModelProto, float_weights: dict[str, np.ndarray],
                 kept: list[dict], tparams: dict[str, TensorQuant], progress: Progress | None, clock: _Clock) -> Any:
    """Each layer's output SQNR alone quantized and, for ``target_sqnr``, the layers to keep float
    (:mod:`.sensitivity`); None unless asked for."""
    cfg = ctx.cfg
    if not (cfg.sensitivity or cfg.target_sqnr is not None):
        return None
    if not kept:
        ctx.report.warnings.append("no report samples: sensitivity not measured, --target-sqnr not applied")
        return None
    from .sensitivity import measure

    sens = measure(float_model, float_weights, ctx.plan, tparams, kept, target_sqnr=cfg.target_sqnr,
                   progress=progress)
    clock.lap("sensitivity")
    return sens


class _Clock:
    """Wall time per phase (logged at debug level; ``bench/bench_quantize.py --phases`` prints it)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _infer_shapes(model: onnx.ModelProto) -> None:
    """Shape inference on a skeleton (no weight copies); the inferred types are added to ``model``."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    except Exception as exc:  # noqa: BLE001 - shape inference is best effort
        raise UnsupportedModelError(f"shape inference failed, cannot tell float tensors apart: {exc}") from None
    have = {v.name for v in model.graph.value_info} | {v.name for v in model.graph.input} | \
        {v.name for v in model.graph.output}
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in have)


def _fold_first(graph: gs.Graph, model: onnx.ModelProto, report: Report, per_channel: bool) -> None:
    """fold-batchnorm and its affine folds on the graph (scale-back only for per-channel weights)."""
    from ..fold_batchnorm import fold_batchnorm_graph, summarize_for_quantize

    frep = fold_batchnorm_graph(graph, opset=default_opset(model), types_from=skeleton(model), scale_back=per_channel)
    summary, warnings = summarize_for_quantize(frep)
    report.summary.update(summary)
    report.warnings.extend(warnings)


def _given(params: Any, report: Report) -> dict[str, TensorQuant]:
    if params is None:
        return {}
    given = read_params(params) if isinstance(params, (str, os.PathLike)) else dict(params)
    report.summary["params_given"] = len(given)
    return given
