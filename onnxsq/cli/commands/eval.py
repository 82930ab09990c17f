"""``onnxsq eval``: accuracy (classification) or pixel accuracy and IoU (segmentation) on labelled data."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import model_argument, preprocess_options, quiet, report_option


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
def command(model: Path, report_path: Path | None, data: Path, labels: Path | None, task: str | None,
            batch_size: int, device: str, **pre) -> None:
    """Evaluate MODEL on --data: top-1/top-5, or pixel accuracy, mean and per-class IoU."""
    from ... import model_io
    from ...evaluation import evaluate
    from ..render import finish
    from ._train_options import open_data

    proto = model_io.load_model(model)
    dataset, _ = open_data(proto, {**pre, "data": data, "labels": labels}, task=task)
    report = evaluate(proto, dataset, batch_size=batch_size, device=device)
    finish(report, report_path, quiet=quiet())
