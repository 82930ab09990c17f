"""``onnxsq train``: the L2, L1, sparse and QAT training stages on onnxruntime-training."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import common_model_command, preprocess_options, quiet, require_training, resolve_output
from ._train_options import data_options, solver_options, train_config


@click.command("train")
@common_model_command("trained")
@data_options
@solver_options
@preprocess_options
def command(model: Path, output: Path | None, in_place: bool, report_path: Path | None, **opts) -> None:
    """Train MODEL on --data with the L2, L1, sparse or QAT stage; write the trained inference model.

    Solver keys (display_sparsity, threshold_weights, sparsity_target, quantization_start_iter, ...)
    come from --config (JSON or TOML); flags override them. --stage qat writes the power-of-two QDQ
    model `onnxsq quantize` would, with trained weights and ranges. Ctrl-C writes a checkpoint
    (--checkpoint) and says how to resume; it is removed after a run that completes, unless
    --checkpoint-every asked for it.
    """
    from ... import model_io
    from ...training import train
    from ...training.loop import TrainingInterrupted
    from ..render import finish
    from ._train_options import interrupted, open_data, progress

    require_training()  # fail first, with the extra to install (or the Python it needs), where training is missing
    out = resolve_output(model, output, "trained", in_place)
    proto = model_io.load_model(model)
    cfg = train_config(opts)
    data, val = open_data(proto, opts, task=cfg.task)
    ckpt = opts["checkpoint"] or out.with_name(out.name + ".ckpt.npz")
    try:
        with progress(quiet()) as on_step:
            trained, report = train(proto, data, cfg, val=val, resume=opts["resume"],
                                    params_out=opts["params_out"], checkpoint=ckpt, on_step=on_step)
    except TrainingInterrupted as stop:
        interrupted(stop)
    model_io.save_model(trained, out)
    if not cfg.checkpoint_every and ckpt.exists():  # written for an interruption that did not come
        ckpt.unlink()
    report.summary["output"] = str(out)
    qat = ["sparsity", "bits", "signed", "shift", "w_shift", "sqnr_db"] if cfg.stage == "qat" else None
    finish(report, report_path, quiet=quiet(), detail_keys=qat)
