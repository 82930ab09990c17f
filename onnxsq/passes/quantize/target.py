"""``--target-sqnr``: quantize again, from the first pass's own statistics (no second calibration), with
the layers :mod:`.sensitivity` picked kept float (``promote = "float"``: they are excluded) or at 16 bits
(``promote = "int16"``: :mod:`.wide`; opset 21). The pick is measured with those layers float; a 16-bit
layer is close to float but not equal, so the report's SQNR after the second pass is the figure to read.
Where the model cannot reach opset 21, the picked layers stay float and the report says so.
"""

from __future__ import annotations

import dataclasses
import glob
from typing import Any

import numpy as np
import onnx

from ...calibration.collect import Progress
from ...calibration.stats import HIST_METHODS
from ...errors import UnsupportedModelError
from ...model_io import ModelLike
from ...report import Report
from .config import QuantizeConfig
from .params import QuantizeContext
from .shards import SAME_RUN


def own_stats(ctx: QuantizeContext, float_model: onnx.ModelProto, float_weights: dict[str, np.ndarray],
              samples: int) -> Any:
    """This run's calibration statistics, to quantize again without calibrating again."""
    from ...calibration.stats_file import CalibrationStats, fingerprint

    model, weights, stats, means = ctx.unaligned or (float_model, float_weights, ctx.stats, ctx.means)  # (.align)
    return CalibrationStats(fingerprint(model, weights), ctx.cfg.method in HIST_METHODS,
                            dict(stats), dict(means), samples, units=1, covered=[(0, 1)])


def quantize_for_target(model: ModelLike, kept: list[dict], cfg: QuantizeConfig, params: Any,
                        progress: Progress | None, params_out: Any, sens: Any,
                        stats: Any) -> tuple[onnx.ModelProto, Report]:
    """Quantize again from the same statistics with the layers ``sens`` picked float (excluded) or 16-bit
    (``promote``); the report says which, and what the target asked for."""
    from .ptq import quantize  # the pass itself, once more
    from .report import rerun_config

    picked = tuple(glob.escape(name) for name in sens.keep_float)
    again = dataclasses.replace(rerun_config(cfg, kept), exclude=tuple(cfg.exclude) + picked, target_sqnr=None,
                                sensitivity=True, promote="float")

    def run(config: QuantizeConfig, part: Any) -> tuple[onnx.ModelProto, Report]:
        return quantize(model, kept, config=config, params=params, progress=progress, params_out=params_out,
                        stats=[part])

    result, fallback = None, None
    if cfg.promote == "int16":
        wide = dataclasses.replace(again, exclude=cfg.exclude, int16=tuple(cfg.int16) + picked)
        try:  # the opset is raised to 21 on the way: the same computation, another model file
            result = run(wide, dataclasses.replace(stats, model=SAME_RUN))
        except UnsupportedModelError as exc:  # no opset 21 for this model: float still reaches the target
            fallback = f"--promote int16: {exc}; the layers are kept float instead"
    quantized, report = result or run(again, stats)
    if fallback:
        report.warnings.append(fallback)
    wide_done = cfg.promote == "int16" and "int16_tensors" in report.summary
    reached = report.summary.get("output_sqnr_db") if wide_done else sens.reached  # 16 bits: as measured again
    report.summary.update(target_sqnr=cfg.target_sqnr,
                          **{"int16_for_target" if wide_done else "kept_float_for_target": list(sens.keep_float)},
                          target_reached=bool(reached is not None and reached >= cfg.target_sqnr))
    if sens.reached is not None and sens.reached < cfg.target_sqnr:
        report.warnings.append(f"--target-sqnr {cfg.target_sqnr:g}: even with every layer float but the lone "
                               f"tensors the output SQNR is {sens.reached:g} dB")
    return quantized, report
