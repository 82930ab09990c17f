"""Helpers shared by the training tests (imported by name, not a fixture); the models are in builders."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxsq.runtime import has_training

TRAINING = has_training()
needs_training = pytest.mark.skipif(not TRAINING, reason="onnxruntime-training is not installed in this environment")


class _Stop(Exception):
    pass


def interrupted_then_resumed(model: onnx.ModelProto, data, ckpt, stop_at: int, **cfg):
    """Train with checkpoints into ``ckpt``, interrupt at iteration ``stop_at``, resume from the checkpoint:
    returns the resumed run's ``(model, report)``."""
    import onnxsq

    def stop(step) -> None:
        if step["iteration"] == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        onnxsq.train(model, data, checkpoint=ckpt, on_step=stop, **cfg)
    return onnxsq.train(model, data, resume=ckpt, **cfg)


def values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
