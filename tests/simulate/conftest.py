"""Quantized sample models for the simulate tests (quantized here, on seeded random data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from simulate_helpers import SAMPLES, random_feeds

from onnxsq.cli.main import run

REPO = Path(__file__).resolve().parents[2]


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
