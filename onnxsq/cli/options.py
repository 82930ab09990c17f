"""Options shared by several commands, defined once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

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


def parse_input_shapes(specs: Sequence[str]) -> dict[str | None, tuple[int, ...]] | None:
    """``--input-shape`` values → {input name (None: the only input): dims}; None when none given.
    A name given twice is an error (the model is not known yet: names are checked when it runs)."""
    from ..shapes import format_shape, parse_input_shape

    out: dict[str | None, tuple[int, ...]] = {}
    for spec in specs:
        name, dims = parse_input_shape(spec)
        if name in out:
            raise InvalidOptionError(f"--input-shape {name or '(bare, for the only input)'}: given twice "
                                     f"({format_shape(out[name])} and {format_shape(dims)}); give each input once")
        out[name] = dims
    return out or None


def input_shape_option(f: Callable) -> Callable:
    """``--input-shape NAME:1x3x224x224`` (repeatable) → ``input_shapes``: the mapping, or None."""
    return click.option(
        "--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
        callback=lambda _ctx, _param, value: parse_input_shapes(value),
        help="Shape of a model input, e.g. images:1x3x224x224 or images:1,3,224,224 (repeatable; a bare "
             "1x3x224x224 for a one-input model) [default: static dims; batch 1, image H W 224, other dynamic "
             "dims 32].")(f)


def python_version() -> tuple[int, int]:
    import sys

    return sys.version_info[:2]


def require_training() -> None:
    """Import onnxruntime-training or fail in one line: on Python 3.12+ the reason is the Python version
    (onnxruntime-training's last release, 1.19.2, has wheels up to 3.11, so the extras install without it
    there), elsewhere the extra to install."""
    from ..errors import RuntimeMissingError
    from ..runtime import import_training

    try:
        import_training()
    except RuntimeMissingError:
        major, minor = python_version()
        if (major, minor) >= (3, 12):
            raise RuntimeMissingError(
                f"training needs Python <= 3.11 (this is {major}.{minor}): onnxruntime-training stopped at 1.19.2, "
                "whose wheels go up to Python 3.11; train in a Python 3.11 environment "
                "(python3.11 -m venv .venv && .venv/bin/pip install 'onnxsq[train-cpu]')") from None
        raise
