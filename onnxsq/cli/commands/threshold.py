"""``onnxsq threshold``: zero small weights layer by layer (the original's ``caffe threshold``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ...errors import InvalidOptionError
from ...passes.threshold.config import ThresholdConfig, parse_layers
from ..options import output_options, quiet, report_option, resolve_output, warn_ignored

_FIELDS = {f.name: f for f in dataclasses.fields(ThresholdConfig)}  # the defaults and help of the options

EPILOG = """\b
Defaults: the fractions of the original tool's code (0.40 / 0.80 / 0.90) with the caps and
step of its manual's example (value_max 0.2, value_maxratio 0.2, step_factor 1e-6). The
original's code defaults (caps 1e-4 and 1e-3, step 1e-8) zero almost nothing, which is not
what `onnxsq threshold model.onnx` should do; pass them explicitly to reproduce that.

\b
The original's example works as written, with ONNX files (an ONNX file holds graph and
weights: --weights, else --model, is the input; --gpu is accepted and ignored):
  onnxsq threshold --threshold_fraction_low 0.40 --threshold_fraction_mid 0.80
    --threshold_fraction_high 0.80 --threshold_value_max 0.2 --threshold_value_maxratio 0.2
    --threshold_step_factor 1e-6 --model="deploy.onnx" --gpu="0" --weights="trained.onnx"
    --output="thresholded.onnx"
"""


def _option(dest: str):
    """A ThresholdConfig field as an option: its default and help from the dataclass, spelled both the
    kebab-case way and the original's way (``--threshold-fraction-low``, ``--threshold_fraction_low``)."""
    f = _FIELDS[dest]
    name = f.metadata["original"]
    return click.option(f"--{name.replace('_', '-')}", f"--{name}", dest, type=float, default=f.default,
                        show_default=True, help=f.metadata["help"])


def _input(model: Path | None, model_opt: Path | None, weights: Path | None) -> Path:
    """MODEL, else --weights (the trained weights, as in the original), else --model."""
    given = [(n, p) for n, p in (("MODEL", model), ("--weights", weights), ("--model", model_opt)) if p]
    if not given:
        raise InvalidOptionError("no input model: give MODEL (or --weights/--model as in the original tool)")
    name, src = given[0]
    for other, path in given[1:]:
        if path.resolve() != src.resolve():
            if name == "MODEL" or other == "--weights":
                raise InvalidOptionError(f"two input models: {name} {src} and {other} {path}; give one")
            warn_ignored(f"{other} {path}", f"an ONNX file holds both graph and weights; thresholding {name} {src}")
    return src


@click.command("threshold", epilog=EPILOG)
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=Path))
@output_options("thresholded")
@report_option
@_option("fraction_low")
@_option("fraction_mid")
@_option("fraction_high")
@_option("value_max")
@_option("value_maxratio")
@_option("step_factor")
@click.option("--search", type=click.Choice(_FIELDS["search"].metadata["choices"]),
              default=_FIELDS["search"].default, show_default=True, help=_FIELDS["search"].metadata["help"])
@click.option("--channelwise", is_flag=True, help="Apply fraction and cap per output channel.")
@click.option("--layer", "layers", multiple=True, metavar="PATTERN=FRACTION",
              help="Fraction for layers whose node or weight name matches the glob (repeatable; last wins).")
@click.option(
    "--exclude", "excludes", multiple=True, metavar="PATTERN", help="Leave matching layers alone (repeatable)."
)
@click.option("--ops", default=",".join(sorted(_FIELDS["ops"].default_factory())), show_default=True,
              help="Weights to threshold: Conv,ConvTranspose,Gemm,MatMul.")
@click.option("--global", "global_fraction", type=float, metavar="FRACTION",
              help="One magnitude threshold pooled over all eligible layers instead of per-layer classes.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), help="Input model (original spelling).")
@click.option("--model", "model_opt", type=click.Path(dir_okay=False, path_type=Path),
              help="Input model when no MODEL/--weights (original spelling).")
@click.option("--gpu", metavar="IDS", help="Accepted for the original's command lines; ignored (runs in numpy).")
def command(model, output, in_place, report_path, layers, excludes, ops, weights, model_opt, gpu, **options) -> None:
    """Zero the smallest weights of each conv layer up to a per-class fraction."""
    from ...model_io import save_model
    from ...passes import PASSES

    config_class, threshold = PASSES["threshold"].config_class(), PASSES["threshold"].load()
    config = config_class(layers=parse_layers(layers), excludes=excludes, ops=ops, **options)
    if gpu is not None:
        warn_ignored("--gpu", "thresholding runs on the CPU in numpy")
    src = _input(model, model_opt, weights)
    out = resolve_output(src, output, "thresholded", in_place)
    new, report = threshold(src, config=config)  # a path is read and checked once, inside
    save_model(new, out)
    if report_path is not None:
        report.write(report_path)
    if not quiet():
        _render(report)


def _render(report) -> None:
    """Per layer: channels, class, target, max|w|, cap, both thresholds, zeros; then skips and totals."""
    import logging

    from ..render import console, table

    con, done = console(), [c for c in report.candidates if c.changed]
    con.print(table("threshold (t = largest zeroed |w|; grid = the original's search)",
                    ["layer", "ni×no", "class", "target", "max|w|", "cap", "t exact", "t grid", "zero before→after"],
                    [[c.name, f"{d['ni']}×{d['no']}", d["class"], d["fraction"], d["max_abs"], d["cap"],
                      d["threshold_exact"], d["threshold_grid"],
                      f"{100 * d['zeros_before']:.1f}% → {100 * d['zeros_after']:.1f}%"]
                     for c in done for d in [c.details]]))
    skipped = [[c.name, c.op, c.reason] for c in report.skipped()]
    if skipped:
        con.print(table("not thresholded", ["layer", "op", "reason"], skipped))
    con.print(table("sparsity (zeros / params over the stated tensors)", ["", ""],
                    [(k, v) for k, v in report.summary.items() if k != "zero_fraction"]))
    for w in report.warnings:
        logging.getLogger("onnxsq.cli").warning("%s", w)
