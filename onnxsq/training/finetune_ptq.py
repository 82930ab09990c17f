"""The post-training passes label-free fine-tuning (:mod:`.finetune`) starts from and is held against."""

from __future__ import annotations

from typing import Any

STEP = "label-free fine-tuning"


def unskip(report: Any) -> None:
    """The pass ran with fine-tuning off: its ``effort_skipped`` line for it is not true of this run."""
    skipped = [s for s in report.summary.pop("effort_skipped", []) if not s.startswith(STEP)]
    if skipped:
        report.summary["effort_skipped"] = skipped


def _aligns(samples: Any, cfg: Any, params: Any, params_out: Any) -> bool:
    """Whether fine-tuning's run takes the scale alignment: not where a parameters file is read or written (it
    holds shifts, not the factors the weights carry), nor with fewer than two samples (fine-tuning will not
    run, and the pass without it is what is returned)."""
    return bool(cfg.align_scales) and params is None and params_out is None and isinstance(samples, list) \
        and len(samples) >= 2


def aligned_pass(model: Any, samples: Any, cfg: Any, params: Any, params_out: Any, jobs: int) -> tuple | None:
    """The pass with its scale alignment (:mod:`onnxsq.passes.quantize.align`), which the fine-tuned model
    must beat too. None where nothing aligns, or where :func:`_aligns` says no."""
    from ..passes.quantize import quantize

    if not _aligns(samples, cfg, params, params_out):
        return None
    q, rep = quantize(model, samples, config=cfg, jobs=jobs)
    return (q, rep) if rep.summary.get("scales_aligned") else None


def not_run(exc: Exception, unaligned: tuple, aligned: tuple | None) -> tuple:
    """Fine-tuning raised (an op onnxruntime-training has no gradient for, ...): the pass as ``max`` runs it
    without fine-tuning -- the aligned one (its own alignment check included) where it ran, else the
    unaligned one -- with the reason in its report."""
    from ..errors import first_line

    model, report = aligned if aligned is not None else unaligned
    if report is not unaligned[1]:  # what the unaligned pass said about the run (skipped steps, the source)
        report.warnings[:0] = [w for w in unaligned[1].warnings if w not in report.warnings]
    report.summary["finetune"] = f"not run: {first_line(exc)}"
    report.warnings.append(f"{STEP} not run: {first_line(exc)}")
    return model, report


def student_start(model: Any, samples: Any, cfg: Any, params: Any, params_out: Any) -> Any:
    """What the student trains and the pass it starts from quantizes: the float model with the scale alignment
    carried by its weights (:mod:`onnxsq.passes.quantize.aligned_float`), else ``model`` -- where nothing
    aligns, or where :func:`aligned_pass` would not run (the shifts a parameters file gets would then be those
    of the aligned float model, not of ``model``)."""
    if not _aligns(samples, cfg, params, params_out):
        return model
    from ..passes.quantize.aligned_float import aligned_float_model

    aligned = aligned_float_model(model, samples, cfg)
    return model if aligned is None else aligned
