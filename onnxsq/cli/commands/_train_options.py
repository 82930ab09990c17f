"""Options shared by ``onnxsq train`` and ``onnxsq eval`` (data) and the solver flags of train.

Solver flags default to None so that only flags actually given override a --config file.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ...training.config import QAT_DEFAULTS, STAGES, TrainConfig

# TrainConfig's defaults, shown in the help (the flags default to None: only those given override --config)
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

_PATH = click.Path(path_type=Path)


def data_options(f: Callable) -> Callable:
    opts = [
        click.option(
            "--data",
            required=True,
            type=_PATH,
            help="Training data: .npz (x, y), an image folder (one sub-folder per class), or an image list.",
        ),
        click.option("--labels", type=_PATH, help="Label list file read in step with an image list (segmentation)."),
        click.option("--val", type=_PATH, help="Validation data (same forms); evaluated after training."),
        click.option("--val-labels", type=_PATH, help="Label list for a --val image list."),
        click.option(
            "--task",
            type=click.Choice(["classification", "segmentation"]),
            help="Task [default: from the label shape].",
        ),
        click.option(
            "--scale-prob",
            type=float,
            default=0.0,
            show_default=True,
            help="Segmentation: probability of a random scale.",
        ),
        click.option(
            "--scale-range",
            nargs=2,
            type=float,
            default=(1.0, 1.0),
            show_default=True,
            help="Segmentation: random scale MIN MAX.",
        ),
        click.option(
            "--crop", nargs=2, type=int, default=None, help="Segmentation: random crop H W [default: --size]."
        ),
        click.option("--mirror/--no-mirror", default=False, help="Segmentation: random horizontal flips."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def solver_options(f: Callable) -> Callable:
    opts = [
        click.option("--stage", type=click.Choice(STAGES),
                     help=f"Training stage [default: {_D['stage']}]; qat writes a power-of-two QDQ model."),
        click.option("--config", "config_file", type=_PATH,
                     help="Solver config (JSON or TOML) with the original's keys."),
        click.option("--iters", type=int, help="Iterations (max_iter)."),
        click.option("--epochs", type=float, help="Epochs (instead of --iters) [default: 1]."),
        click.option("--batch-size", type=int, help=f"Batch size [default: {_D['batch_size']}]."),
        click.option("--lr", type=float, help=f"Base learning rate [default: {_D['lr']}]."),
        click.option("--lr-schedule", type=click.Choice(["fixed", "step", "multistep", "poly", "cosine"]),
                     help=f"Learning-rate policy [default: {_D['lr_policy']}]."),
        click.option("--gamma", type=float, help=f"step/multistep: decay factor [default: {_D['gamma']}]."),
        click.option("--step-size", type=int, help="step: decay every N iterations."),
        click.option("--milestones", type=str, help="multistep: comma-separated iterations."),
        click.option("--power", type=float, help=f"poly: exponent [default: {_D['power']:g}]."),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]),
                     help=f"sgd (momentum) or adamw [default: {_D['optimizer']}]."),
        click.option("--momentum", type=float, help=f"SGD momentum [default: {_D['momentum']}]."),
        click.option("--weight-decay", type=float, help="L2 weight decay on conv/fc weights."),
        click.option("--l1", type=float, help="L1 strength: loss += l1 * sum|w| over conv/fc weights."),
        click.option("--seed", type=int, help=f"Seed of shuffling and augmentation [default: {_D['seed']}]."),
        click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]),
                     help=f"Execution device [default: {_D['device']}]."),
        click.option("--threads", type=int, help="onnxruntime's intra-op threads [default: one per core]."),
        click.option("--display", type=int, help=f"A log line every N iterations [default: {_D['display']}]."),
        click.option("--checkpoint-every", type=int, help="Write a checkpoint every N iterations."),
        click.option("--checkpoint", type=_PATH, help="Checkpoint file [default: OUTPUT.ckpt.npz]."),
        click.option("--resume", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Resume from a checkpoint file."),
        click.option("--quantization-start-iter", type=int,
                     help="qat: float iterations collecting activation ranges before fake quantization "
                          "[default: 10% of the iterations]."),
        click.option("--bits", type=int,
                     help=f"qat: bits of weights and activations [default: {QAT_DEFAULTS['bits']}]."),
        click.option("--weight-bits", type=int, help="qat: bits of the weights [default: --bits]."),
        click.option("--params-out", type=_PATH, help="qat: write the quantization parameters (JSON)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


_FLAG_TO_KEY = {"lr_schedule": "lr_policy", "step_size": "stepsize", "milestones": "stepvalue"}
_CONFIG_FLAGS = ("stage", "iters", "epochs", "batch_size", "lr", "lr_schedule", "gamma", "step_size", "milestones",
                 "power", "optimizer", "momentum", "weight_decay", "l1", "seed", "device", "threads", "display",
                 "checkpoint_every", "task", "quantization_start_iter", "bits", "weight_bits")


def train_config(opts: dict[str, Any]):
    """TrainConfig from --config, then the flags given on the command line."""
    from ...errors import InvalidOptionError
    from ...training.config import TrainConfig, load_config_file

    values = load_config_file(opts["config_file"]) if opts.get("config_file") else {}
    flags = {_FLAG_TO_KEY.get(k, k): opts[k] for k in _CONFIG_FLAGS if opts.get(k) is not None}
    if "stepvalue" in flags:
        try:
            flags["stepvalue"] = tuple(int(v) for v in str(flags["stepvalue"]).split(",") if v.strip())
        except ValueError:
            raise InvalidOptionError(
                f"--milestones must be comma-separated integers, not {opts['milestones']!r}") from None
    iters_given = any(k in values for k in ("iters", "max_iter"))
    if ("iters" in flags and "epochs" in values) or ("epochs" in flags and iters_given):
        values = {k: v for k, v in values.items() if k not in ("iters", "max_iter", "epochs")}
    return TrainConfig.from_mapping({**values, **flags})


def open_data(model, opts: dict[str, Any], *, task: str | None):
    """(train or eval data, val data or None) with the model's preprocessing and the augmentation flags."""
    from ...data.loader import check_crop, open_dataset, preprocess_for_model
    from ...data.segmentation import Augment

    check_crop(model, tuple(opts["crop"]) if opts.get("crop") else None, layout=opts["layout"])
    pre = preprocess_for_model(model, size=opts.get("size") or None, mean=tuple(opts["mean"]), std=tuple(opts["std"]),
                               channel_order=opts["channel_order"], layout=opts["layout"])
    aug = Augment(scale_prob=opts.get("scale_prob") or 0.0, scale_min=opts.get("scale_range", (1, 1))[0],
                  scale_max=opts.get("scale_range", (1, 1))[1], crop=tuple(opts["crop"]) if opts.get("crop") else None,
                  mirror=bool(opts.get("mirror")))
    data = open_dataset(opts["data"], labels=opts.get("labels"), task=task, pre=pre, augment=aug)
    val = None
    if opts.get("val") is not None:
        val = open_dataset(opts["val"], labels=opts.get("val_labels"), task=task, pre=pre)
    return data, val


def interrupted(stop) -> None:
    """Ctrl-C during training: say where the run stopped and how to resume; exit 130."""
    from ..render import err_console

    where = f"; checkpoint: {stop.checkpoint}; resume with --resume {stop.checkpoint}" if stop.checkpoint else ""
    err_console().print(f"interrupted at iteration {stop.iteration}{where}", highlight=False, markup=False,
                        soft_wrap=True)
    raise click.exceptions.Exit(130)


def _step_info(s: dict[str, Any]) -> str:
    sparsity = "" if s.get("sparsity") is None else f"  sparsity {s['sparsity']:.3f}"
    return f"loss {s['loss']:.4f}  lr {s['lr']:.3g}{sparsity}"


@contextlib.contextmanager
def progress(quiet: bool) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """A rich progress bar fed by the trainer's per-step callback (none when quiet).

    Where stderr is no terminal (logs, CI) a line every ``display`` iterations instead, unless ``-v``
    already logs them.
    """
    import logging

    from ..render import err_console

    if quiet:
        yield None
        return
    con = err_console()
    if not con.is_terminal:
        logged = logging.getLogger("onnxsq.training").isEnabledFor(logging.INFO)

        def line(s: dict[str, Any]) -> None:
            every, it = s.get("display") or 0, s["iteration"]
            if not logged and every and (it % every == 0 or it == s["max_iter"]):
                con.print(f"train {it}/{s['max_iter']}  {_step_info(s)}", highlight=False, markup=False)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), console=con, transient=True) as bar:
        task_id = bar.add_task("train", total=None, info="")

        def on_step(s: dict[str, Any]) -> None:
            bar.update(task_id, total=s["max_iter"], completed=s["iteration"], info=_step_info(s))

        yield on_step
