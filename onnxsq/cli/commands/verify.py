"""``onnxsq verify A B``: run two models on the same inputs and compare their outputs."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from ..options import input_shape_option, quiet, report_option, warn_ignored

_MODEL = click.Path(dir_okay=False, path_type=Path)


@click.command(name="verify")
@click.argument("model_a", type=_MODEL)
@click.argument("model_b", type=_MODEL)
@click.option("--data", type=click.Path(path_type=Path),
              help="Inputs: a .npz (arrays keyed by input name) or a directory of .npz [default: seeded random].")
@click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance [default: by dtype, 1e-5 for float32].")
@click.option("--rtol", type=click.FloatRange(min=0), help="Relative tolerance [default: by dtype, 1e-4 for float32].")
@click.option("--samples", type=click.IntRange(min=1), default=2, show_default=True, help="Random input sets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@input_shape_option
@report_option
@click.pass_context
def command(ctx: click.Context, model_a: Path, model_b: Path, data: Path | None, atol: float | None,
            rtol: float | None, samples: int, seed: int, input_shapes: dict[str | None, tuple[int, ...]] | None,
            report_path: Path | None) -> None:
    """Run MODEL_A and MODEL_B (graph optimizations off) on the same inputs; per-output max/mean error.

    Random inputs are shaped by --input-shape where the dims are dynamic. Exits with status 1 when any
    output element breaks |a - b| <= atol + rtol * |a|, or when MODEL_A does not run on the inputs.
    """
    from ...errors import VerificationError
    from ...model_io import load_model
    from ...verify import compare_models, load_feeds
    from ..render import finish

    first = load_model(model_a)  # one-line errors for bad files before onnxruntime sees them
    load_model(model_b)
    feeds = load_feeds(data, first) if data is not None else None
    for name, flag in (("samples", "--samples"), ("seed", "--seed"), ("input_shapes", "--input-shape")):
        if feeds is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            warn_ignored(flag, "--data gives the inputs")
    # Paths, not protos: onnxruntime then reads external data itself (models over 2 GB).
    result = compare_models(str(model_a), str(model_b), feeds=feeds, seed=seed, samples=samples, rtol=rtol,
                            atol=atol, input_shapes=None if feeds is not None else input_shapes,
                            alternative="--data FILE.npz")
    report = result.to_report()
    report.summary.update(
        model_a=str(model_a), model_b=str(model_b), inputs=str(data) if data else f"random, seed {seed}"
    )
    finish(report, report_path, quiet=quiet())
    if not result.ok:
        raise VerificationError(result.failure_message())
