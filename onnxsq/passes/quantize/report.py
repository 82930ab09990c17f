"""The quantize pass's report: per layer what was quantized and how (bits, shift, requantization shift,
range; clipped fraction and SQNR where measured), or why it stays float; the summary totals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...calibration import pow2
from ...params import TensorQuant
from .config import EFFORT_MAX_OFF, EFFORT_MAX_SKIPPED
from .params import QuantizeContext

HIST_BARS = 64  # per sign, in the report's compact histograms


def compact_histogram(st: Any, bars: int = HIST_BARS) -> dict[str, Any] | None:
    """A calibration histogram (:class:`~onnxsq.calibration.stats.TensorStats`) summed down to ``bars`` bins
    per sign over ``[0, 2**exp)``: ``{"exp", "pos", "neg", "min", "max"}``; None without one."""
    if st is None or not getattr(st, "histogram", False) or not st.count:
        return None
    pos, neg = np.asarray(st.hist_pos), np.asarray(st.hist_neg)
    return {"exp": int(st.hist_exp), "pos": pos.reshape(bars, -1).sum(1).tolist(),
            "neg": neg.reshape(bars, -1).sum(1).tolist(), "min": float(st.min), "max": float(st.max)}


def _shift_text(p: TensorQuant) -> Any:
    if not p.per_channel:
        return int(p.shift)
    return f"{min(p.shift)}..{max(p.shift)}"


def _range_note(p: TensorQuant) -> list[str]:
    """The range rule where it is not the configured estimator's plain choice (through a reader's function,
    by a Softmax's error)."""
    return [f"range: {p.estimator}"] if p.estimator and "(" in p.estimator else []


def fill_report(ctx: QuantizeContext, tparams: dict[str, TensorQuant], ev: Any, samples: int, seconds: float,
                sens: Any = None) -> None:
    """One candidate per planned layer (quantized with its bits, shifts, range, clipped fraction and SQNR;
    fused; or skipped with the reason), one per other quantized tensor, and the summary. ``sens``: a
    :class:`.sensitivity.Sensitivity` (each layer's output SQNR alone quantized), or None."""
    report, plan, cfg = ctx.report, ctx.plan, ctx.cfg
    alone = sens.alone if sens is not None else {}
    weights = {u.node: u for u in plan.weights}
    for entry in plan.layers:
        if entry.action in ("skipped", "fused") or entry.output is None:
            report.add(entry.node, entry.op, entry.action, entry.reason)
            continue
        p = tparams[entry.output]
        d: dict[str, Any] = {"tensor": entry.output, "bits": p.bits, "signed": p.signed, "shift": p.shift,
                             "range": [float(f"{v:.4g}") for v in p.observed_range] if p.observed_range else None}
        use = weights.get(entry.node)
        if use is not None:
            wp = tparams[use.weight]
            d["w_bits"], d["w_shift"] = wp.bits, _shift_text(wp)
            rs = np.asarray(pow2.requant_shift(int(tparams[use.input].shift), wp.shift_array, int(p.shift)))
            d["requant_shift"] = int(rs) if rs.ndim == 0 else f"{int(rs.min())}..{int(rs.max())}"
        if ev is not None and entry.output in ev.layers:
            d["clipped"] = ev.layers[entry.output].clipped
            d["sqnr_db"] = ev.layers[entry.output].sqnr_db
        if entry.node in alone:
            d["sensitivity_db"] = alone[entry.node]
        if cfg.histograms and (h := compact_histogram(ctx.stats.get(entry.output))) is not None:
            d["histogram"] = h
        notes = "; ".join(([entry.reason] if entry.reason else []) + (use.notes if use else []) + _range_note(p))
        report.add(entry.node, entry.op, "quantized", notes, **d)
    covered = {e.output for e in plan.layers if e.output}
    for t in plan.activations + plan.constants:
        if t not in covered:  # graph inputs, outputs of float ops, constant operands
            p = tparams[t]
            d = {"tensor": t, "bits": p.bits, "signed": p.signed, "shift": p.shift,
                 "range": [float(f"{v:.4g}") for v in p.observed_range] if p.observed_range else None}
            if ev is not None and t in ev.layers:
                d["clipped"], d["sqnr_db"] = ev.layers[t].clipped, ev.layers[t].sqnr_db
            if cfg.histograms and (h := compact_histogram(ctx.stats.get(t))) is not None:
                d["histogram"] = h
            report.add(t, "tensor", "quantized", "; ".join(["input of a quantized layer", *_range_note(p)]), **d)
    _summarize(ctx, ev, sens, samples, seconds)


def _summarize(ctx: QuantizeContext, ev: Any, sens: Any, samples: int, seconds: float) -> None:
    s, cfg, plan = ctx.report.summary, ctx.cfg, ctx.plan
    if cfg.effort != "default":
        s["effort"] = cfg.effort
    if cfg.effort == "max":
        from ...runtime import has_training  # where fine-tuning runs, it drops this line (onnxsq.training.finetune)

        s["effort_skipped"] = list(EFFORT_MAX_OFF if has_training() else EFFORT_MAX_SKIPPED)
    s.update({"method": cfg.method, "bits": cfg.bits, "weight_bits": cfg.wbits, "per_channel": cfg.per_channel,
              "activations_quantized": len(plan.activations) + len(plan.constants), "weights_quantized":
              len({u.weight for u in plan.weights}), "layers_kept_float": sum(
                  1 for e in plan.layers if e.action == "skipped"), "calibration_samples": samples,
              "calibration_seconds": round(seconds, 3)})
    if sens is not None:
        ranked = sorted(sens.alone.items(), key=lambda kv: kv[1])[:5]
        s["sensitivity_all_db"] = sens.full
        s["most_sensitive"] = [f"{name} ({db:g} dB)" for name, db in ranked]
    if ev is not None:
        s["report_samples"] = ev.samples
        one = len(ev.outputs) == 1
        for name, v in ev.outputs.items():
            s["output_sqnr_db" if one else f"output_sqnr_db ({name})"] = round(v, 2)
        for name, v in ev.top1.items():
            s["top1_agreement" if one else f"top1_agreement ({name})"] = round(v, 4)


# the report's crops: another draw than fine-tuning's (seeds 0 and 1, onnxsq.training.finetune)
CROP_SEED = 7


def with_report_crops(ctx: QuantizeContext, kept: list[dict]) -> list[dict]:
    """The kept report samples, then ``report_crops`` seeded crops of each (:mod:`onnxsq.data.crops`): what
    GPTQ, the whole-model checks and the report measure on. The originals stay first, so the Softmax ranges
    and a run again on these samples (:func:`rerun_config`) see the same first samples."""
    k = ctx.cfg.report_crops or 0
    if not kept or k < 1 or ctx.cfg.report_samples < 1:
        return kept
    from ...data.crops import with_crops

    out = with_crops(kept, k, CROP_SEED)
    if len(out) == len(kept):
        ctx.report.warnings.append(f"--report-crops {k} ignored: the samples hold no image input (a float32 "
                                   "NCHW or NHWC batch of 1, 3 or 4 channels)")
    else:
        ctx.report.summary["report_crops"] = f"{len(out) - len(kept)} crops of the {len(kept)} report samples"
    return out


def rerun_config(cfg: Any, kept: list[dict]) -> Any:
    """``cfg`` for the pass run once more with ``kept`` (crops included) as its calibration source and reused
    statistics: every one of them a report sample, and no crops of crops."""
    import dataclasses

    return dataclasses.replace(cfg, report_crops=0, report_samples=max(cfg.report_samples, len(kept)))


def output_db(summary: dict[str, Any]) -> float | None:
    """The report's output SQNR (dB): the one output's, or the mean of the outputs' (each counts once, whatever
    its scale: a detector's boxes and scores, five captcha heads); None where none was measured."""
    if summary.get("output_sqnr_db") is not None:
        return float(summary["output_sqnr_db"])
    per = [float(v) for k, v in summary.items() if k.startswith("output_sqnr_db (") and v is not None
           and np.isfinite(v)]
    return float(np.mean(per)) if per else None
