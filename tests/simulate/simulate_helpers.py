"""Shared by the simulate tests: the sample models' input shapes and seeded random feeds (a module
of its own, uniquely named: ``conftest`` is not importable by name once several test folders have one)."""

from __future__ import annotations

import numpy as np
import onnx

SAMPLES = {"digits_cnn": (1, 8, 8), "jacintonet_seg": (3, 64, 64), "small_cls_torch": (3, 32, 32),
           "small_cls_torch_op17": (3, 32, 32), "jacintonet_seg_op17": (3, 64, 64)}


def random_feeds(model: onnx.ModelProto, shape: tuple[int, ...], count: int, seed: int, batch: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    name = model.graph.input[0].name
    return [{name: rng.standard_normal((batch, *shape)).astype(np.float32)} for _ in range(count)]
