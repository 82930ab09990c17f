"""Training stages L2, L1, sparse and QAT on onnxruntime-training (the original's stages 2, 3, 5 and 7).

    import onnxsq
    from onnxsq.data.loader import open_dataset
    from onnxsq.training import TrainConfig
    model, report = onnxsq.train("net.onnx", open_dataset("train.npz"), TrainConfig(stage="l2", epochs=10))

``train`` is pure: the input model is not modified; the returned model is the input graph with the
trained values (see :mod:`onnxsq.training.export`). Modules: ``config`` (options with the original
solver names), ``artifacts`` (training graph, rewrites, loss blocks), ``loop`` (optimizer, schedules,
checkpoints), ``sparsity`` (masks, thresholding, gradual sparsification), ``export``, ``qat`` and
``qat_graph`` (quantization-aware training: ``stage="qat"`` returns the power-of-two QDQ model that
``onnxsq quantize`` would write, with the trained weights and ranges).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from ..data.loader import as_dataset
from ..errors import InvalidOptionError
from ..model_io import ModelLike, load_model
from ..report import Report
from .config import TrainConfig, load_config_file

__all__ = ["TrainConfig", "load_config_file", "train"]


def train(model: ModelLike, data: Any, config: TrainConfig | None = None, *,
          resume: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
          val: Any = None, on_step: Callable[[dict[str, Any]], None] | None = None,
          params_out: str | os.PathLike | None = None, **overrides: Any) -> tuple[onnx.ModelProto, Report]:
    """Train ``model`` on ``data`` (a dataset from :func:`onnxsq.open_dataset`, or a path it reads).

    ``val`` (a dataset) is evaluated after training; its metrics join the summary as ``val_*``.
    ``overrides`` set :class:`TrainConfig` fields by name. ``checkpoint`` is the ``.npz`` written every
    ``checkpoint_every`` iterations; ``resume`` continues from such a file. ``params_out`` (stage
    ``qat``): write the quantization parameters file there (``onnxsq quantize --params-out``'s format).
    Raises :class:`~onnxsq.errors.RuntimeMissingError` where onnxruntime-training is not installed.
    """
    from ..runtime import import_training
    from .loop import Trainer

    cfg = TrainConfig.from_mapping(overrides, base=config) if overrides else (config or TrainConfig())
    import_training()
    proto = load_model(model)
    data = as_dataset(data, proto)
    val = as_dataset(val, proto, what="val") if val is not None else None
    paths = {"resume": Path(resume) if resume else None, "checkpoint": Path(checkpoint) if checkpoint else None}
    if cfg.stage == "qat":
        from .qat import QATTrainer

        trained, report = QATTrainer(proto, data, cfg, on_step=on_step).run(**paths, params_out=params_out)
    else:
        if params_out is not None:
            raise InvalidOptionError(f"params_out: only the qat stage writes quantization parameters, not "
                                     f"{cfg.stage}")
        trained, report = Trainer(proto, data, cfg, on_step=on_step).run(**paths)
    if val is not None:
        from ..evaluation import evaluate

        metrics = evaluate(trained, val, batch_size=max(cfg.batch_size, 64), device=cfg.device,
                           ignore_label=cfg.ignore_label).summary
        report.summary.update({f"val_{k}": v for k, v in metrics.items() if k not in ("task", "per_class_iou")})
        if "per_class_iou" in metrics:
            report.summary["val_per_class_iou"] = metrics["per_class_iou"]
    return trained, report
