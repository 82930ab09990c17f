"""Calibration crops: seeded crops of the report samples join calibration's statistics, and are checked.

Calibration's ranges fit the framings it saw, often whole images stretched to the input size. A deployed
model also sees other framings: a zoomed-in crop has larger, sharper features, and a tensor whose range a
few samples set (pooled features before a classifier head, a captcha's character logits) clips on them. With
``calib_crops = N``, N seeded crops of each kept sample (60-100% of each side, bilinear back to the input
size, :mod:`onnxsq.data.crops`; another draw than the report's) are observed too and their statistics merged
into the originals' (:meth:`~onnxsq.calibration.stats.TensorStats.merge`, exact; bias correction's means stay
the originals'). Only the kept samples are cropped (they are the ones in memory): the larger the calibration
set, the less the crops weigh, and the less they are needed.

Crops can also cost: a range widened for framings the model will not see is a coarser step on the ones it
will (mtcnn's face crops, a detector's pages). So the merged statistics are checked: the pass runs once more
from them (:mod:`.recheck`) and that model is kept only where its output SQNR on the report samples is higher
by the margin; the report's ``calib_crops_check`` says what each scored. No image input, or no kept sample:
a warning names the flag.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx

# crops of another draw than the report's (.report.CROP_SEED 7) and fine-tuning's (0, 1)
CALIB_CROP_SEED = 11


def crop_stats(ctx: Any, float_model: onnx.ModelProto, float_weights: dict, kept: list[dict], samples: int) -> Any:
    """Calibration statistics of the ``samples`` read (``ctx.stats``) and ``calib_crops`` crops of each of
    ``kept``, merged (a :class:`~onnxsq.calibration.stats_file.CalibrationStats` of this run's model), with
    the line the report shows; None where there is nothing to crop."""
    from ...calibration.collect import collect_stats
    from ...calibration.stats_file import CalibrationStats, fingerprint
    from ...data.crops import with_crops

    k = ctx.cfg.calib_crops or 0
    if k < 1 or not ctx.stats:
        return None
    feeds = with_crops(kept, k, CALIB_CROP_SEED)[len(kept):] if kept else []
    if not feeds:
        why = ("there is no report sample to crop (--report-samples 0)" if not kept else
               "the samples hold no image input (a float32 NCHW or NHWC batch of 1, 3 or 4 channels)")
        ctx.report.warnings.append(f"--calib-crops {k} ignored: {why}")
        return None
    names = list(ctx.stats)
    histogram = next(iter(ctx.stats.values())).histogram
    extra, _, seen = collect_stats(float_model, names, [(f, 1, samples + i) for i, f in enumerate(feeds)],
                                   histogram=histogram, weights=float_weights)
    merged = {t: ctx.stats[t].merge(extra[t]) for t in names}
    return (CalibrationStats(fingerprint(float_model, float_weights), histogram, merged, dict(ctx.means),
                             samples + seen, units=1, covered=[(0, 1)]), f"{seen} crops of {len(kept)} samples")


def crops_checked(model: Any, kept: list[dict], cfg: Any, args: tuple, first: tuple, crops: Any) -> tuple:
    """``first`` (the pass on the samples alone), or the pass again from the merged statistics (``crops``:
    :func:`crop_stats`'s, None: nothing to check) where that model's output SQNR on the report samples is
    higher (:mod:`.recheck`). The report's ``calib_crops`` and ``calib_crops_check`` say what each scored."""
    if crops is None:
        return first
    from .recheck import keep_better, rerun
    from .report import rerun_config

    stats, note = crops
    again = dataclasses.replace(rerun_config(cfg, kept), calib_crops=0)
    q, r, check = keep_better(first, rerun(model, kept, again, args, stats, "crops"), ("samples", "crops"),
                              args[2], first_calibration=False)
    if check["kept"] == "crops":  # read from the source: the first run's; observed: those and the crops
        r.summary.update({k: first[1].summary[k] for k in ("calibration_seconds", "calibration_data")
                          if k in first[1].summary}, calibration_samples=stats.samples)
    r.summary.update(calib_crops=note, calib_crops_check=check)
    return q, r
