"""Every command on every real model of the zoo, with its default options, as a user runs it.

``optimize`` (its self-check on random inputs of the default shapes), ``verify``, ``threshold``
(defaults and ``--global``), ``quantize --calib <image folder>`` (real photos; seeded feeds for a model
that takes no image) and ``inspect``. Asserted: exit 0 (never 3, a bug), exact folds (the self-check
and ``verify`` pass), output models that pass onnx.checker, and power-of-two QDQ (zero points 0) that
loads and runs in onnxruntime with all graph optimizations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxsq.calibration.pow2 import is_power_of_two
from onnxsq.runtime import make_session

zoo_pkg = pytest.importorskip("zoo")
from zoo import CATALOG  # noqa: E402
from zoo.cli_args import preprocess_args, samples, takes_images  # noqa: E402

NAMES = [s.name for s in CATALOG]
CALIB_IMAGES = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo-commands")


def _model(zoo, name: str):
    for m in zoo:
        if m.name == name:
            return m
    pytest.skip(f"{name} is not in the zoo cache (torch exports are made by `make zoo` in .venv)")


def _ok(res, what: str) -> None:
    assert res.code == 0, f"{what}: exit {res.code}: {res.err.strip()[-800:]}"


def _optimized(run_cli, m, workdir: Path) -> tuple[Path, dict]:
    out, rep = workdir / f"{m.name}.opt.onnx", workdir / f"{m.name}.opt.json"
    if not out.exists():
        _ok(run_cli("optimize", m.path, "-o", out, "--report", rep, "-q"), f"optimize {m.name}")
    return out, json.loads(rep.read_text())


def _qdq_ok(path: Path, m) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no QDQ pair inserted"
    for n in qdq:
        scale = numpy_helper.to_array(inits[n.input[1]])
        assert is_power_of_two(scale), f"{n.name}: scale {scale.ravel()[:3]} is not a power of two"
        if len(n.input) > 2 and n.input[2] in inits:
            assert not np.any(numpy_helper.to_array(inits[n.input[2]])), f"{n.name}: zero point is not 0"
    session = make_session(str(path), optimize=True)
    outs = session.run(None, m.feeds(1))
    assert all(np.all(np.isfinite(o)) for o in outs if np.asarray(o).dtype.kind == "f")


@pytest.mark.parametrize("name", NAMES)
def test_optimize_folds_exactly(zoo, run_cli, workdir, name):
    m = _model(zoo, name)
    out, rep = _optimized(run_cli, m, workdir)
    assert rep["summary"]["verified"] is True
    onnx.checker.check_model(onnx.load(str(out)))
    bn = [c for c in rep["candidates"] if c["op"] == "BatchNormalization"]
    assert all(c["action"] != "skipped" for c in bn), [c["reason"] for c in bn if c["action"] == "skipped"]


@pytest.mark.parametrize("name", NAMES)
def test_verify_original_against_optimized(zoo, run_cli, workdir, name):
    m = _model(zoo, name)
    out, _ = _optimized(run_cli, m, workdir)
    _ok(run_cli("verify", m.path, out, "-q"), f"verify {name}")


@pytest.mark.parametrize("mode", [[], ["--global", "0.8"]], ids=["layerwise", "global"])
@pytest.mark.parametrize("name", NAMES)
def test_threshold_writes_a_model_that_runs(zoo, run_cli, workdir, name, mode):
    m = _model(zoo, name)
    out = workdir / f"{name}.thr{len(mode)}.onnx"
    _ok(run_cli("threshold", m.path, "-o", out, "-q", *mode), f"threshold {name} {mode}")
    make_session(str(out)).run(None, m.feeds(2))


@pytest.mark.parametrize("name", NAMES)
def test_quantize_on_real_images_then_inspect(zoo, run_cli, workdir, name):
    m = _model(zoo, name)
    out = workdir / f"{name}.q.onnx"
    if takes_images(m):
        calib = ["--calib", m.path.parent.parent / "images", "--calib-count", str(CALIB_IMAGES), *preprocess_args(m)]
    else:
        data = workdir / f"{name}-calib"
        data.mkdir(exist_ok=True)
        for i, feed in enumerate(samples(m, [], CALIB_IMAGES)):
            np.savez(data / f"s{i}.npz", **feed)
        calib = ["--calib", data]
    _ok(run_cli("quantize", m.path, *calib, "-o", out, "-q"), f"quantize {name}")
    _qdq_ok(out, m)
    rep = workdir / f"{name}.inspect.json"
    _ok(run_cli("inspect", out, "--report", rep, "-q"), f"inspect {name}")
    summary = json.loads(rep.read_text())["summary"]
    # every layer with a power-of-two int8 weight is listed as quantized (ddddocr_common_old's
    # ConvInteger layers were int8 before: they are not onnxsq layers)
    graph = onnx.load(str(out)).graph
    inits = {i.name for i in graph.initializer}
    dq_of_const = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    q_layers = sum(1 for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                   and len(n.input) > 1 and n.input[1] in dq_of_const)
    assert summary.get("quantized_layers", 0) >= min(q_layers, 1)


@pytest.mark.parametrize("name", NAMES)
def test_equalize_keeps_every_output(zoo, name):
    """Power-of-two cross-layer equalization changes no value the model computes."""
    from onnxsq.passes.equalize import equalize

    m = _model(zoo, name)
    result, report = equalize(m.path)
    onnx.checker.check_model(result)
    feeds = m.feeds(3)
    ref = make_session(str(m.path)).run(None, feeds)
    got = make_session(result).run(None, feeds)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert all(c.reason for c in report.candidates if not c.changed)
