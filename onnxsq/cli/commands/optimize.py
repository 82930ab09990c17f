"""``onnxsq optimize MODEL``: fold BatchNormalization into neighbouring layers, then check the result."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import common_model_command, input_shape_option, quiet, resolve_output, warn_ignored


@click.command("optimize")
@common_model_command("opt")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime check of the result against the input.")
@click.option("--keep-standalone", is_flag=True, help="Leave unfoldable BN nodes as they are (default: Mul/Add).")
@click.option("--no-fold-affine", is_flag=True,
              help="Leave constant Mul/Add/Sub/Div after Conv/ConvTranspose/Gemm/MatMul unfolded.")
@click.option("--rtol", type=click.FloatRange(min=0), help="Relative tolerance of the check [default: by float type].")
@click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance of the check [default: by float type].")
@input_shape_option
def command(model: Path, output: Path | None, in_place: bool, report_path: Path | None, no_verify: bool,
            keep_standalone: bool, no_fold_affine: bool, rtol: float | None, atol: float | None,
            input_shapes: dict[str | None, tuple[int, ...]] | None) -> None:
    """Fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul (and BN→Conv where exact), then
    constant Mul/Add/Sub/Div after those layers (a 2-D MatMul + Add becomes a Gemm).

    The result is run against MODEL in onnxruntime on seeded random inputs (shaped by --input-shape
    where the model's dims are dynamic); a mismatch is an error.
    """
    from ...model_io import save_model
    from ...passes import get_pass

    fold_batchnorm = get_pass("fold-batchnorm")
    from ..render import finish

    out = resolve_output(model, output, "opt", in_place)
    for name, value in (("--rtol", rtol), ("--atol", atol), ("--input-shape", input_shapes)):
        if no_verify and value is not None:
            warn_ignored(name, "--no-verify skips the check it sets")
    result, report = fold_batchnorm(model, verify=not no_verify, rtol=rtol, atol=atol, input_shapes=input_shapes,
                                    standalone="keep" if keep_standalone else "affine",
                                    fold_affine=not no_fold_affine)
    save_model(result, out)
    report.summary["output"] = str(out)
    finish(report, report_path, quiet=quiet())
