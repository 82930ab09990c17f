"""Label-free fine-tuning: the last step of ``quantize --effort max`` (``--finetune``), onnxruntime-training only.

The quantized model's weights train against the float model as teacher on the calibration samples, no
labels: the student (:mod:`.finetune_graph`) is the float model the quantize pass quantized (folded,
equalized) with a fake quantizer at every shift the pass chose, starting from the pass's own integers
(GPTQ's where ``--weight-rounding gptq`` ran; bias-corrected biases); the loss is each output's squared
error against the teacher's, normalized by its power. The shifts stay fixed (measured: re-estimating them
did not help), zeros stay zero (the float model's zero weights are masked: gradient, optimizer buffers
and weight). AdamW with a cosine learning rate, ``finetune_iters`` steps of ``finetune_batch`` samples.

Over-fitting a handful of images is the risk, so every ``finetune_holdout``-th calibration sample is held
out of training (with as many crops of it), and the fine-tuned weights are kept only where the held-out
samples' output SQNR (the exported QDQ models run in onnxruntime against the float model; each sample's
SQNR in dB, averaged: :func:`held_out_sqnr`) beats the post-training
model's by ``finetune_min_gain`` dB (four held-out images are a noisy measure: on the PP-OCR direction
classifier a +0.4 dB held-out gain came with -1.1 dB on other images); else the pass's model is returned
and the report says why. The student is the float model with the pass's scale alignment carried
by its weights (:mod:`onnxsq.passes.quantize.aligned_float`; a parameters file holds shifts, not factors),
and starts from the pass run on it; the pass with alignment runs too, and the post-training model held
against is the better of the two on the held-out samples (``post_training`` in the report; its start is
named ``unaligned`` there): ``max`` is never the pass it started from where the aligned one scores higher.
Once kept, the same training runs again from the same start on every sample,
the held-out ones too, and that is exported (``finetune_refit``: on PP-OCRv4's recognizer 11.4 -> 11.6 dB
on the bench's images, ddddocr_det 24.6 -> 25.3). The report's
``finetune`` entry holds the held-out SQNR before and after, the iterations and the seconds;
``finetune_gain_db`` the gain kept (0 where none was kept).

Where fine-tuning cannot run (an op onnxruntime-training has no gradient for: ResizeGrad), the aligned pass
is returned, as ``max`` gives it without fine-tuning, and the report says why.

The export is the quantize pass again with every shift given (as QAT exports), on the trained float
weights: no calibration, no equalization or bias correction (the weights trained as they are).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration import pow2
from ..data.crops import crops
from ..errors import OnnxsqError, UnsupportedModelError
from ..params import TensorQuant, read_params
from ..runtime import has_training
from .finetune_graph import with_outputs
from .finetune_ptq import STEP, aligned_pass, not_run, student_start, unskip

log = logging.getLogger(__name__)


def quantize_and_finetune(model: Any, calib: Any, cfg: Any, params: Any, progress: Any, params_out: Any,
                          stats: Any, jobs: int) -> tuple[onnx.ModelProto, Any]:
    """The quantize pass (``cfg`` with fine-tuning off), then fine-tuning where onnxruntime-training imports;
    the pass's model where it is not installed, with the reason in the report."""
    from ..passes.quantize import quantize

    ptq_cfg = dataclasses.replace(cfg, finetune=False)
    if not has_training():
        quantized, report = quantize(model, calib, config=ptq_cfg, params=params, progress=progress,
                                     params_out=params_out, stats=stats, jobs=jobs)
        if cfg.effort != "max":  # max says it in its effort_skipped line
            report.warnings.append(f"--finetune: {STEP} needs onnxruntime-training (the training environment), "
                                   "not installed here: skipped")
        return quantized, report
    base = _base(model, ptq_cfg, params)
    samples, warnings = _samples(calib, ptq_cfg, base) if calib is not None and stats is None else (None, [])
    start = student_start(model, samples, ptq_cfg, params, params_out)
    if start is not model:
        base = _base(start, ptq_cfg, None)
    with tempfile.TemporaryDirectory(prefix="onnxsq-finetune-") as tmp:
        pfile = Path(tmp) / "ptq.params.json"
        quantized, report = quantize(start, samples if samples is not None else calib, config=ptq_cfg, params=params,
                                     progress=progress, params_out=pfile, stats=stats, jobs=jobs)
        report.summary["finetune_start"] = "unaligned" if start is model else "aligned float model"
        report.warnings.extend(warnings)
        unskip(report)
        tparams = read_params(pfile)
        aligned = aligned_pass(model, samples, ptq_cfg, params, params_out, jobs)
        if aligned is not None:
            unskip(aligned[1])
        try:
            quantized, report = _finetune(quantized, base, report, tparams, samples, cfg, Path(tmp), aligned)
        except OnnxsqError as exc:
            quantized, report = not_run(exc, (quantized, report), aligned)
        chosen = Path(tmp) / "ft.params.json"
        if params_out is not None:
            os.replace(chosen if chosen.exists() else pfile, params_out)
            report.summary["params_file"] = str(params_out)
    return quantized, report


def _base(model: Any, cfg: Any, params: Any) -> tuple[onnx.ModelProto, Any]:
    """The float model the pass quantizes (folded, equalized, at its opset) and the pass's plan."""
    from ..calibration.collect import runnable
    from ..passes.quantize.ptq import prepare

    ctx, graph, meta, *_ = prepare(model, cfg, params)
    skel, fed = runnable(graph, meta)
    return full_model(skel, fed), ctx.plan


def _samples(calib: Any, cfg: Any, base: tuple[onnx.ModelProto, Any]) -> tuple[list[dict], list[str]]:
    """The calibration samples as one-sample feeds (read once: fine-tuning needs them again) and the
    source's warnings."""
    from ..passes.quantize.ptq import open_calib

    source = open_calib(calib, cfg, base[0], {})
    out: list[dict[str, np.ndarray]] = []
    for feed in source:
        n = len(next(iter(feed.values())))
        out += [{k: v[i:i + 1] for k, v in feed.items()} for i in range(n)]
        if cfg.calib_count is not None and len(out) >= cfg.calib_count:
            out = out[:cfg.calib_count]
            break
    return out, list(source.warnings)


def full_model(skeleton: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A skeleton's fed weights back as initializers: one self-contained model."""
    model = onnx.ModelProto()
    model.CopyFrom(skeleton)
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items())
    return model


def _run(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    from ..runtime import make_session

    sess = make_session(model, optimize=True)
    return [[np.asarray(o) for o in sess.run(None, dict(f))] for f in feeds]


def pooled_sqnr(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> float:
    """Output SQNR (dB), every output of every sample pooled (as ``bench/fidelity.py`` measures)."""
    signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for rs in ref for r in rs)
    noise = sum(float(np.sum(np.square(np.asarray(r, np.float64) - g))) for rs, gs in zip(ref, got)
                for r, g in zip(rs, gs))
    if noise == 0:
        return math.inf
    return -math.inf if signal == 0 else 10 * math.log10(signal / noise)


def held_out_sqnr(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> tuple[float, float]:
    """(mean over the samples of each one's output SQNR in dB, the pooled SQNR): the held-out rule's
    measures. The rule reads the mean: the pooled figure follows the few samples with the most noise (on
    ddddocr_det a fine-tuning that gained +2.0 dB per held-out sample and +2.1 on the bench's images moved
    it +0.2; on the PP-OCR classifier it said +0.3 where the bench's images lost 6 dB, the mean -2.1)."""
    each = [pooled_sqnr([r], [g]) for r, g in zip(ref, got)]
    each = [min(max(v, -300.0), 300.0) for v in each]  # an exact or a silent sample: bounded, not inf
    return float(np.mean(each)) if each else math.nan, pooled_sqnr(ref, got)


def split(samples: Sequence[Any], every: int) -> tuple[list[Any], list[Any]]:
    """(training, held out): every ``every``-th sample from the second-last position backwards is held out,
    at least one; both empty-free (fewer than two samples: no split, ``([...], [])``)."""
    if len(samples) < 2:
        return list(samples), []
    held = set(range(len(samples) - 2, -1, -every)) if every > 1 else set(range(0, len(samples), 2))
    held = held or {len(samples) - 1}
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def with_initializers(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the initializers named in ``values`` replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.name in values:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(values[init.name]), init.name))
    return out


def start_weights(weights: Mapping[str, np.ndarray], tparams: Mapping[str, TensorQuant],
                  qweights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float weights with every quantized weight replaced by the pass's integers times its scale and
    every corrected bias by its corrected value (the model the pass wrote, in float)."""
    out = dict(weights)
    for name, p in tparams.items():
        b = out.get(name)
        if p.kind == "bias" and p.correction is not None and b is not None and np.size(p.correction) == b.size:
            out[name] = (b - np.asarray(p.correction, b.dtype).reshape(b.shape)).astype(b.dtype)
    for name, q in qweights.items():
        p = tparams.get(name)
        if p is None or name not in out:
            continue
        shift = pow2.expand_shape(p.shift_array, q.ndim, p.axis if p.per_channel else None)
        out[name] = np.ldexp(q.astype(np.float32), -shift.astype(np.int32)).astype(np.float32)
    return out


def _finetune(quantized: onnx.ModelProto, base: tuple[onnx.ModelProto, Any], report: Any,
              tparams: dict[str, TensorQuant], samples: Any, cfg: Any, tmp: Path,
              aligned: tuple | None = None) -> tuple[onnx.ModelProto, Any]:
    """Train, export, and keep the result only where the held-out samples' output SQNR rises above the
    post-training model's: the better on them of the unaligned pass the student started from and the
    ``aligned`` one (model, report). Returns the model kept and its report."""
    float_model, plan = base
    if not isinstance(samples, list) or len(samples) < 2:
        raise UnsupportedModelError("it needs at least two calibration samples (one to train on, one held out)")
    weights = initializers(float_model)
    train, held = split(samples, cfg.finetune_holdout)
    name = next(iter(samples[0]))
    train = crops(train, name, cfg.finetune_crops, seed=0)
    held = crops(held, name, cfg.finetune_crops, seed=1)
    feats = features(float_model, plan, tparams, cfg.finetune_features)
    t_train = _run(with_outputs(float_model, feats), train)
    t_held = _run(float_model, held)
    base_db, base_pooled = held_out_sqnr(t_held, _run(quantized, held))
    post, post_db, post_pooled, which = (quantized, report), base_db, base_pooled, "unaligned"
    if aligned is not None:
        al_db, al_pooled = held_out_sqnr(t_held, _run(aligned[0], held))
        if al_db > base_db:
            post, post_db, post_pooled, which = aligned, al_db, al_pooled, "aligned"
    init = start_weights(weights, tparams, ptq_integers(quantized, weights))
    masks = {n: w != 0 for n, w in weights.items() if w.dtype == np.float32 and w.ndim >= 2 and not w.all()}
    t0 = time.perf_counter()
    trained, losses = train_student(with_initializers(float_model, init), plan, tparams, train, t_train, masks, cfg,
                                    feats)
    seconds = time.perf_counter() - t0
    pfile = tmp / "ft.candidate.json"
    tuned, _ = export(with_initializers(float_model, trained), tparams, samples[:cfg.report_samples], cfg, pfile)
    tuned_db, tuned_pooled = held_out_sqnr(t_held, _run(tuned, held))
    kept = tuned_db >= post_db + cfg.finetune_min_gain
    info = {"iterations": len(losses), "lr": cfg.finetune_lr, "batch": cfg.finetune_batch, "features": len(feats),
            "train_samples": len(train), "held_out_samples": len(held), "seconds": round(seconds, 1),
            "first_loss": round(losses[0], 6), "final_loss": round(float(np.mean(losses[-10:])), 6),
            "post_training": which, "held_out_sqnr_db_before": round(post_db, 2),
            "held_out_sqnr_db_after": round(tuned_db, 2), "held_out_pooled_db_before": round(post_pooled, 2),
            "held_out_pooled_db_after": round(tuned_pooled, 2), "kept": kept}
    if aligned is not None:
        info["held_out_sqnr_db_unaligned"] = round(base_db, 2)
        info["held_out_sqnr_db_aligned"] = round(al_db, 2)
    if not kept:
        rep = post[1]
        rep.summary.update(finetune=info, finetune_gain_db=0.0)
        if rep is not report:  # what the unaligned pass said about the run (skipped steps, the source)
            rep.warnings[:0] = [w for w in report.warnings if w not in rep.warnings]
        rep.warnings.append(f"{STEP}: held-out output SQNR {tuned_db:.2f} dB (pooled {tuned_pooled:.2f}) against "
                            f"the post-training model's {post_db:.2f} ({post_pooled:.2f}; {which}; needs "
                            f"+{cfg.finetune_min_gain:g}): kept the post-training model")
        return post
    s = report.summary
    s.update(finetune=info, finetune_gain_db=round(tuned_db - post_db, 2))
    if cfg.finetune_refit and held:
        tuned = _refit(float_model, plan, tparams, init, (train, t_train), held, masks, cfg, feats, samples, pfile, s)
    os.replace(pfile, tmp / "ft.params.json")
    s.update(output_fidelity(float_model, tuned, samples[:cfg.report_samples]))
    s["finetune"]["layer_table"] = "the post-training model's (same shifts; its per-layer SQNR before fine-tuning)"
    return tuned, report


def _refit(float_model: onnx.ModelProto, plan: Any, tparams: Mapping[str, TensorQuant], init: Mapping[str, np.ndarray],
           train: tuple[list[dict], list], held: list[dict], masks: Mapping[str, np.ndarray], cfg: Any,
           feats: Sequence[str], samples: list[dict], pfile: Path, summary: dict) -> onnx.ModelProto:
    """The held-out samples have said the recipe gains: train it again from the same start on every
    sample (the held-out ones' crops too) and export that (more images, less over-fitting: the eval table
    in the README)."""
    xs = [*train[0], *held]
    targets = [*train[1], *_run(with_outputs(float_model, feats), held)]
    t0 = time.perf_counter()
    trained, losses = train_student(with_initializers(float_model, init), plan, tparams, xs, targets, masks, cfg, feats)
    tuned, _ = export(with_initializers(float_model, trained), tparams, samples[:cfg.report_samples], cfg, pfile)
    summary["finetune"]["refit"] = {"samples": len(xs), "seconds": round(time.perf_counter() - t0, 1),
                                    "final_loss": round(float(np.mean(losses[-10:])), 6)}
    return tuned


def output_fidelity(float_model: onnx.ModelProto, quantized: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    """The summary's ``output_sqnr_db`` and ``top1_agreement`` of ``quantized`` against the float model on
    ``feeds``, as the pass's report measures them (each output pooled over the samples; argmax on axis 1).
    The export's own report compares against the trained float weights, not the float model."""
    names = [o.name for o in float_model.graph.output]
    ref, got = _run(float_model, feeds), _run(quantized, feeds)
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        tag = "" if len(names) == 1 else f" ({name})"
        out[f"output_sqnr_db{tag}"] = round(pooled_sqnr([[r[k]] for r in ref], [[g[k]] for g in got]), 2)
        pairs = [(r[k], g[k]) for r, g in zip(ref, got) if r[k].ndim >= 2 and r[k].shape[1] > 1]
        if pairs:
            hits = sum(int(np.count_nonzero(np.argmax(a, 1) == np.argmax(b, 1))) for a, b in pairs)
            out[f"top1_agreement{tag}"] = round(hits / sum(a.size // a.shape[1] for a, _ in pairs), 4)
    return out


def ptq_integers(quantized: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each float weight's integers in the quantize pass's model (stored as ``<name>_quantized``)."""
    from ..qdq import read_qdq

    out = {}
    for dq in read_qdq(quantized).values():
        if dq.integers is not None and dq.integers.name.endswith("_quantized"):
            name = dq.integers.name[:-len("_quantized")]
            if name in weights:
                out[name] = numpy_helper.to_array(dq.integers)
    return out


def export(model: onnx.ModelProto, tparams: Mapping[str, TensorQuant], feeds: list[dict], cfg: Any,
           params_out: Path) -> tuple[onnx.ModelProto, Any]:
    """The quantize pass on the trained float model with every shift given (nothing calibrated)."""
    from ..passes.quantize import quantize

    again = dataclasses.replace(cfg, effort="default", finetune=False, fold_batchnorm=False, equalize=False,
                                fold_forward=False,  # the trained graph is the folded one: its shifts name its tensors
                                bias_correction=False, weight_rounding="nearest", sensitivity=False,
                                target_sqnr=None, histograms=False, calib_count=None)
    given = {k: v for k, v in tparams.items() if v.kind != "bias"}  # a bias takes shift_in + shift_w
    return quantize(model, feeds or None, config=again, params=given, params_out=params_out)


def out_ndim(model: onnx.ModelProto) -> dict[str, int]:
    return {i.name: len(i.dims) for i in model.graph.initializer}


def quant_steps(plan: Any, tparams: Mapping[str, TensorQuant], ndim: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Each weight's quantization step ``2**-shift`` (per channel, broadcastable) and each bias's its layer
    output's: the units of fine-tuning's learning rate (Adam moves every value by about ``lr`` a step)."""
    out: dict[str, np.ndarray] = {}
    for use in plan.weights:
        p = tparams.get(use.weight)
        if p is not None and use.weight in ndim:
            axis = p.axis if p.per_channel else None
            out[use.weight] = pow2.expand_shape(np.asarray(p.scale, np.float32), ndim[use.weight], axis)
        o = tparams.get(use.output)
        if use.bias is not None and o is not None:
            out[use.bias] = np.asarray(o.scale, np.float32)
    for c in plan.constants:  # Add/Concat operands, on their activation group's grid
        if c in tparams:
            out[c] = np.asarray(tparams[c].scale, np.float32)
    return out


def features(model: onnx.ModelProto, plan: Any, tparams: Mapping[str, TensorQuant], count: int) -> list[str]:
    """``count`` quantized layer outputs, evenly spaced through the network (not graph outputs): the
    intermediate tensors the student also matches."""
    outputs = {o.name for o in model.graph.output}
    layers = [e.output for e in plan.layers if e.action == "quantized" and e.output in tparams
              and e.output not in outputs]
    layers = list(dict.fromkeys(layers))
    if count < 1 or not layers:
        return []
    picks = np.linspace(0, len(layers) - 1, min(count, len(layers)) + 1)[1:]  # from the deepest back
    return list(dict.fromkeys(layers[int(round(p))] for p in picks))


def train_student(model: onnx.ModelProto, plan: Any, tparams: Mapping[str, TensorQuant], xs: list[dict],
                  targets: list[list[np.ndarray]], masks: Mapping[str, np.ndarray], cfg: Any,
                  feats: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], list[float]]:
    """Train ``model``'s weights as the fake-quantized student against ``targets``; returns every weight
    (trained or not) and the loss per step.

    The run is a child process (:mod:`.finetune_child`): onnxruntime-training's kernels can die of a signal
    on graphs they do not handle (measured: SIGFPE in PP-OCRv4's recognizer, SIGSEGV in ddddocr's), which
    must end this step with its reason, not the quantize run."""
    import pickle
    import subprocess
    import sys

    import onnxsq

    payload = (model.SerializeToString(), plan, dict(tparams), xs, targets, dict(masks), cfg, list(feats))
    with tempfile.TemporaryDirectory(prefix="onnxsq-finetune-") as tmp:
        src, dst = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        src.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(onnxsq.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.run([sys.executable, "-m", "onnxsq.training.finetune_child", str(src), str(dst)],
                              env=env, capture_output=True, text=True)
        if proc.returncode < 0 or not dst.exists():
            raise UnsupportedModelError(f"onnxruntime-training crashed running the training graph (exit code "
                                        f"{proc.returncode}: signal {-proc.returncode})")
        ok, result = pickle.loads(dst.read_bytes())
    if not ok:
        raise UnsupportedModelError(result)
    values, losses = result
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out.update(values)
    return out, losses
