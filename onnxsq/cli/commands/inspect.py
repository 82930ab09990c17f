"""``onnxsq inspect MODEL``: per-layer weight shapes, parameter counts, zero fractions and totals."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import model_argument, quiet, report_option

_COLUMNS = ("weight_shape", "params", "zeros", "zero_fraction")
_QUANT_COLUMNS = ("bits", "shift", "in_shift", "out_shift")


@click.command(name="inspect")
@model_argument
@report_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table as a self-contained page (quantize --report-html's layout).")
def command(model: Path, report_path: Path | None, html_path: Path | None) -> None:
    """Per-layer table (op, weight shape, parameters, zero fraction) and totals of MODEL.

    Quantized (QDQ) models get bits and power-of-two shifts per layer.
    """
    from ...inspect import inspect_model
    from ..render import finish

    report = inspect_model(model)
    present = {k for c in report.candidates for k in c.details}
    keys = [*_COLUMNS, *(k for k in _QUANT_COLUMNS if k in present)]
    if html_path is not None:
        from ..report_html import write_html

        report.summary["html"] = str(write_html(report.to_dict(), html_path, f"onnxsq inspect {model.name}"))
    finish(report, report_path, quiet=quiet(), detail_keys=keys)
