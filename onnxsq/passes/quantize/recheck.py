"""Quantize once more from statistics already collected and keep the better whole model on the report samples.

Two checks of ``--effort max`` compare the pass with one option against the pass with another on the same
samples: scale alignment against none (:func:`.align.checked`) and calibration with crops against without
(:mod:`.calib_crops`). Each runs the pass again from reused statistics (no calibration again: only resolve,
insert and report) and keeps the second model only where its output SQNR on the report samples (several
outputs: their mean, :func:`.report.output_db`) is higher by ``CHECK_MARGIN_DB``: a tie keeps the first, the
plain one. The parameters file written is the kept model's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import onnx

from ...report import Report

log = logging.getLogger(__name__)

# the second model must lead by this much: on the report samples a tie is noise (vietcombank's 27.14 vs 27.10
# dB without alignment had cost 1.2 dB on held-out crops)
CHECK_MARGIN_DB = 0.25
# what calibration read and took: the first run's (the second reused its statistics)
CALIBRATION_KEYS = ("stats_parts", "calibration_samples", "calibration_seconds", "calibration_data")


def rerun(model: Any, kept: list[dict], config: Any, args: tuple, stats: Any, tag: str
          ) -> tuple[onnx.ModelProto, Report, Path | None]:
    """The pass on ``model`` with ``config`` from ``stats`` (``kept``: the report samples); ``args``: the
    pass's params, progress and params_out; the parameters file goes aside (``.<tag>.tmp``) until kept."""
    from .ptq import quantize  # the pass itself, once more

    params, progress, params_out = args
    aside = None if params_out is None else Path(f"{os.fspath(params_out)}.{tag}.tmp")
    q, r = quantize(model, kept, config=config, params=params, progress=progress, params_out=aside, stats=[stats])
    return q, r, aside


def keep_better(first: tuple[onnx.ModelProto, Report], second: tuple[onnx.ModelProto, Report, Path | None],
                names: tuple[str, str], params_out: Any, *, first_calibration: bool = True
                ) -> tuple[onnx.ModelProto, Report, dict[str, Any]]:
    """``first`` or ``second`` by output SQNR, and the check's record ``{"kept", "margin_db", "<name>_db"...}``.
    Where the second is kept its parameters file replaces ``params_out``, its report takes the first's
    warnings, seconds and (``first_calibration``) calibration figures."""
    (q1, r1), (q2, r2, aside) = first, second
    from .report import output_db

    a, b = output_db(r1.summary), output_db(r2.summary)
    keep = names[1] if a is not None and b is not None and b > a + CHECK_MARGIN_DB else names[0]
    check = {"kept": keep, "margin_db": CHECK_MARGIN_DB, f"{names[0]}_db": None if a is None else round(a, 2),
             f"{names[1]}_db": None if b is None else round(b, 2)}
    log.info("output SQNR %s dB %s, %s %s: %s kept", a, names[0], b, names[1], keep)
    if keep == names[0]:
        if aside is not None:
            aside.unlink(missing_ok=True)
        return q1, r1, check
    if aside is not None:
        os.replace(aside, params_out)
        r2.summary["params_file"] = os.fspath(params_out)
    if first_calibration:
        r2.summary.update({k: r1.summary[k] for k in CALIBRATION_KEYS if k in r1.summary})
    r2.summary["seconds"] = round(r1.summary.get("seconds", 0.0) + r2.summary.get("seconds", 0.0), 3)
    r2.warnings[:0] = [w for w in r1.warnings if w not in r2.warnings]
    return q2, r2, check
