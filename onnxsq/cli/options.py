"""Options shared by several commands, defined once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import click

from ..errors import InvalidOptionError
from ..model_io import same_file


def model_argument(f: Callable) -> Callable:
    return click.argument("model", type=click.Path(dir_okay=False, path_type=Path))(f)


def output_options(suffix: str) -> Callable:
    """``-o/--output`` (default: ``MODEL.<suffix>.onnx`` beside the input) and ``--in-place``."""

    def deco(f: Callable) -> Callable:
        f = click.option("--in-place", is_flag=True,
                         help="Allow the output to replace the input file (never done otherwise).")(f)
        f = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                         help=f"Output model [default: MODEL.{suffix}.onnx beside MODEL].")(f)
        return f

    return deco


def report_option(f: Callable) -> Callable:
    return click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
                        help="Also write the report as JSON to this file.")(f)


def resolve_output(model: Path, output: Path | None, suffix: str, in_place: bool) -> Path:
    """The output path; refuses to overwrite the input without ``--in-place``."""
    out = output if output is not None else model.with_name(f"{model.stem}.{suffix}.onnx")
    if in_place and output is None:
        out = model
    if same_file(model, out) and not in_place:
        raise InvalidOptionError(f"{out}: output would overwrite the input model; pass --in-place to allow it")
    return out


def quiet(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    return bool(root.obj and root.obj.get("quiet"))


def warn_ignored(name: str, why: str) -> None:
    """Say that an accepted flag has no effect (never ignore a flag silently)."""
    logging.getLogger("onnxsq.cli").warning("%s is ignored: %s", name, why)


def common_model_command(suffix: str) -> Callable:
    """MODEL argument, -o/--output, --in-place and --report, in that order."""

    def deco(f: Callable) -> Callable:
        return model_argument(output_options(suffix)(report_option(f)))

    return deco


def preprocess_options(f: Callable) -> Callable:
    """Image preprocessing shared by quantize (calibration images), train and eval."""
    f = click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
                     help="Tensor layout the model takes.")(f)
    f = click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True,
                     help="Channel order the model was trained with.")(f)
    f = click.option("--std", nargs=3, type=float, default=(1.0, 1.0, 1.0), show_default=True,
                     help="Per-channel std in 0-255 pixel units: x = (pixel - mean) / std.")(f)
    f = click.option("--mean", nargs=3, type=float, default=(0.0, 0.0, 0.0), show_default=True,
                     help="Per-channel mean in 0-255 pixel units.")(f)
    f = click.option("--size", nargs=2, type=int, default=None,
                     help="Resize images to H W [default: the model's static input size].")(f)
    return f
