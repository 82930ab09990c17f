"""Quantized sample models for the simulate tests (quantized here, on seeded random data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxsq.cli.main import run

REPO = Path(__file__).resolve().parents[2]
SAMPLES = {"digits_cnn": (1, 8, 8), "jacintonet_seg": (3, 64, 64), "small_cls_torch": (3, 32, 32),
           "small_cls_torch_op17": (3, 32, 32), "jacintonet_seg_op17": (3, 64, 64)}


def random_feeds(model: onnx.ModelProto, shape: tuple[int, ...], count: int, seed: int, batch: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    name = model.graph.input[0].name
    return [{name: rng.standard_normal((batch, *shape)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """``quantized(name, per_channel=False)`` → path of the sample model quantized on random data."""
    root = tmp_path_factory.mktemp("simulate-q")
    made: dict[tuple[str, bool], Path] = {}

    def get(name: str, per_channel: bool = False) -> Path:
        key = (name, per_channel)
        if key not in made:
            src = REPO / "sample_models" / f"{name}.onnx"
            model = onnx.load(str(src))
            calib = root / f"{name}.calib.npz"
            np.savez(calib, **{model.graph.input[0].name: np.concatenate(
                [f[model.graph.input[0].name] for f in random_feeds(model, SAMPLES[name], 4, seed=0)])})
            path = root / f"{name}{'.pc' if per_channel else ''}.q.onnx"
            argv = ["quantize", str(src), "--calib", str(calib), "--report-samples", "0", "-o", str(path), "-q"]
            assert run(argv + (["--per-channel"] if per_channel else [])) == 0
            made[key] = path
        return made[key]

    return get
