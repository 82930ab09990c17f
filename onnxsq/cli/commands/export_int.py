"""``onnxsq export-int MODEL.q.onnx -o DIR``: the integer deployment package of a QDQ model."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import quiet, report_option


@click.command("export-int")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Package directory (created): model.json + weights.npz.")
@report_option
def command(model: Path, output: Path, report_path: Path | None) -> None:
    """Write MODEL's integer program as a package: model.json (layer order, ops, attributes, tensor
    names, bits, signedness, shifts, requant shifts, float islands) and weights.npz (int8 weights,
    int32 biases). `onnxsq simulate DIR` runs it alone, exactly as it runs MODEL.
    """
    from ...model_io import load_model
    from ...report import Report
    from ...simulate.package import JSON_NAME, NPZ_NAME, requant_shift, write_package
    from ...simulate.program import KIND_ACTION, load_program
    from ..render import finish

    program = load_program(load_model(model))
    out = write_package(program, output, source=model.name)
    report = Report("export-int")
    for lay in program.layers:
        d = lay.out.to_json() if lay.out else {}
        report.add(lay.name, lay.op, KIND_ACTION[lay.kind], lay.reason,
                   **d, requant_shift=_short(requant_shift(program, lay)))
    report.summary.update(layers=len(program.layers), float_islands=len(program.islands),
                          package=str(out), files=[JSON_NAME, NPZ_NAME])
    finish(report, report_path, quiet=quiet(), detail_keys=["bits", "signed", "shift", "requant_shift"])


def _short(shift):
    """A per-channel shift list as its distinct values, for the table."""
    if isinstance(shift, list):
        return sorted(set(shift))
    return shift
