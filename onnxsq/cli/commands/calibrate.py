"""``onnxsq calibrate MODEL --calib DATA [--shard I/N] -o STATS``: calibration statistics, mergeable by
``onnxsq quantize MODEL --stats DIR`` (or ``--stats S0 --stats S1 ...``) into exactly what one pass would
have gathered."""

from __future__ import annotations

from pathlib import Path

import click

from ...calibration.stats import METHODS
from ...passes.quantize.config import QuantizeConfig
from ..options import input_shape_option, model_argument, preprocess_options, quiet, report_option

DEFAULTS = QuantizeConfig()  # the one place the defaults live; the flags show them


@click.command("calibrate")
@model_argument
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The statistics file to write (.stats).")
@report_option
@click.option("--calib", required=True, help="Calibration data: image or .npy/.npz folder, or a .npz file.")
@click.option("--shard", metavar="I/N", help="Calibrate shard I of N (I from 0): a contiguous part of the data.")
@click.option("--calib-count", type=int, help="Use at most N calibration samples of the whole set [default: all].")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True,
              help="Calibration samples per onnxruntime run (models with a dynamic batch axis).")
@click.option("--per-channel/--per-tensor", default=DEFAULTS.per_channel, show_default=True,
              help="As quantize will be run (it decides the opset and so the calibrated model).")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="As quantize will be run (repeatable).")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULTS.method, show_default=True,
              help="The activation estimator quantize will use (percentile, mse and auto need histograms).")
@click.option("--no-bias-correction", is_flag=True, help="As quantize will be run (no input means gathered).")
@click.option("--no-equalize", is_flag=True, help="As quantize will be run.")
@click.option("--no-fold-forward", is_flag=True, help="As quantize will be run.")
@preprocess_options
@input_shape_option
def command(model: Path, output: Path, report_path: Path | None, calib: str, shard: str | None,
            calib_count: int | None, batch_size: int, per_channel: bool, exclude: tuple[str, ...], method: str,
            no_bias_correction: bool, no_equalize: bool, no_fold_forward: bool, size, mean, std, channel_order: str,
            layout: str, input_shapes: dict[str | None, tuple[int, ...]] | None) -> None:
    """Write MODEL's calibration statistics on --calib (or its shard I/N) to -o STATS.

    Run one process per shard anywhere (a Slurm array, Ray, Kubernetes jobs), then
    `onnxsq quantize MODEL --stats DIR` (or --stats S0 --stats S1 ...) with the same options: shards merged
    give exactly the one-pass statistics, so the same quantized model.
    """
    from ...calibration.stats_file import write_stats
    from ...calibration.units import parse_shard
    from ...data.images import Preprocess
    from ...errors import InvalidOptionError
    from ...passes.quantize.shards import calibrate
    from ...report import Report
    from ..render import finish, phase_progress
    from .quantize import _calib_size

    if output.resolve() == model.resolve():
        raise InvalidOptionError(f"{output}: the statistics would overwrite the model (give another -o)")
    part = parse_shard(shard) if shard is not None else None
    pre = Preprocess(size=_calib_size(model, calib, tuple(size) if size else None, input_shapes, layout),
                     mean=mean, std=std, channel_order=channel_order, layout=layout)
    cfg = QuantizeConfig(per_channel=per_channel, exclude=exclude, method=method, calib_count=calib_count,
                         batch_size=batch_size, bias_correction=not no_bias_correction, equalize=not no_equalize,
                         fold_forward=not no_fold_forward,
                         preprocess=None if pre == Preprocess() else pre)
    with phase_progress(quiet=quiet()) as advance:
        stats = calibrate(model, calib, config=cfg, shard=part, progress=advance)
    write_stats(stats, output)
    report = Report("calibrate")
    lo, hi = stats.covered[0]
    report.summary.update({"shard": shard or "0/1", "units": f"{lo}..{hi - 1} of {stats.units}",
                           "samples": stats.samples, "tensors": len(stats.tensors), "means": len(stats.means),
                           "histogram": stats.histogram, "output": str(output)})
    report.warnings.extend(stats.warnings)
    finish(report, report_path, quiet=quiet())
