"""``onnxsq eval``: accuracy (classification) or pixel accuracy and IoU (segmentation) on labelled data."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..options import input_shape_option, model_argument, preprocess_options, quiet, report_option, warn_ignored


@click.command("eval")
@model_argument
@report_option
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Labelled data: .npz (x, y), an image folder, or an image list with --labels.")
@click.option("--labels", type=click.Path(path_type=Path), help="Label list read in step with an image list.")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), help="[default: from the labels]")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="cpu", show_default=True)
@preprocess_options
@input_shape_option
def command(model: Path, report_path: Path | None, data: Path, labels: Path | None, task: str | None,
            batch_size: int, device: str, input_shapes: dict[str | None, tuple[int, ...]] | None, **pre) -> None:
    """Evaluate MODEL on --data: top-1/top-5, or pixel accuracy, mean and per-class IoU.

    Images take --size, else the model's static H W, else --input-shape's; an image folder on a model
    with a dynamic size defaults to 224 (an image list keeps each image's own size). Their
    --mean/--std/--channel-order/--layout default to what the model stores (onnxsq quantize on images
    writes them); a given one that differs is warned about.
    """
    from ... import model_io
    from ...evaluation import evaluate
    from ..render import finish
    from ._train_options import open_data

    proto = model_io.load_model(model)
    images = labels is not None or data.is_dir()
    pre, source = _preprocessing(proto, pre) if images else (pre, None)
    pre["size"] = _eval_size(proto, data, labels, pre.get("size") or None, input_shapes, pre["layout"])
    dataset, _ = open_data(proto, {**pre, "data": data, "labels": labels}, task=task)
    report = evaluate(proto, dataset, batch_size=batch_size, device=device)
    if source:
        report.summary["preprocessing"] = source
    finish(report, report_path, quiet=quiet())


def _preprocessing(proto, pre: dict) -> tuple[dict, str | None]:
    """--mean/--std/--channel-order/--layout: those given, else the ones the model stores (onnxsq quantize
    writes them); a given one that differs from the stored is warned about. Also what the summary says."""
    from ...data.stored import FIELDS, resolve, stored

    ctx = click.get_current_context()
    given = {k for k in FIELDS if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    out, notes = resolve(proto, pre, given)
    for note in notes:
        logging.getLogger("onnxsq.cli").warning("%s", note)
    meta = stored(proto)
    if meta is None:
        return out, None
    fields = " ".join(f"{k}={'/'.join(f'{v:g}' for v in out[k]) if k in ('mean', 'std') else out[k]}" for k in FIELDS)
    mine = f"; given: {', '.join('--' + k.replace('_', '-') for k in sorted(given))}" if given else ""
    return out, f"{fields} (stored in the model by {meta['by']}{mine})"


def _eval_size(proto, data: Path, labels: Path | None, size: tuple[int, int] | None,
               input_shapes: dict[str | None, tuple[int, ...]] | None, layout: str) -> tuple[int, int] | None:
    """The image size: --size; else, on a model with a dynamic H or W, --input-shape's; else 224 for
    an image folder (its images must stack into batches), the decoded size for an image list
    (segmentation is scored at its labels' resolution). None: the model's static size."""
    from ...shapes import image_size

    if size is not None:
        if input_shapes:
            warn_ignored("--input-shape", "--size sets the image size")
        return tuple(size)
    images = labels is not None or data.is_dir()
    if not images:
        if input_shapes:
            warn_ignored("--input-shape", "it sizes images, and --data gives arrays")
        return None
    if labels is not None and not input_shapes:
        return None
    from ...data.stored import stored_size

    stored = None if input_shapes else stored_size(proto)  # a dynamic H or W: the size it was calibrated at
    return stored if stored is not None else image_size(proto, input_shapes, layout)
