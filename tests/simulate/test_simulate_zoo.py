"""simulate on real models of the zoo, quantized as a user does (``onnxsq quantize --calib`` the zoo's
photos): equal to onnxruntime's optimized run (exactly where the model has no float island; else at
least 99.9% of output elements bit-equal and none more than one step apart), and the export-int
package reproduces the simulation exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxsq.cli.main import run
from onnxsq.simulate.api import SimulateConfig, simulate
from onnxsq.simulate.execute import Simulator
from onnxsq.simulate.package import read_package, write_package
from onnxsq.simulate.program import load_program

# Small enough for the suite (each quantizes in < 1 s); between them: residual adds, GAP + Gemm
# (resnet), HardSwish float islands and depthwise convs (mobilenetv3), ConvTranspose (decoder).
MODELS = ["torch_resnet_basic", "torch_mobilenetv3_block", "torch_convtranspose_decoder"]


@pytest.fixture(scope="module")
def zoo_q(zoo, tmp_path_factory):
    from zoo.cli_args import preprocess_args

    root = tmp_path_factory.mktemp("simulate-zoo")
    made = {}

    def get(name: str):
        if name not in made:
            m = next((z for z in zoo if z.name == name), None)
            if m is None:
                pytest.skip(f"{name} is not in the zoo cache (torch exports are made by `make zoo` in .venv)")
            out = root / f"{name}.q.onnx"
            argv = ["quantize", str(m.path), "--calib", str(m.path.parent.parent / "images"), "--calib-count", "4",
                    *preprocess_args(m), "--report-samples", "0", "-o", str(out), "-q"]
            assert run(argv) == 0
            made[name] = (m, out)
        return made[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_equals_onnxruntime(zoo_q, name):
    from zoo.cli_args import samples

    m, path = zoo_q(name)
    model = onnx.load(str(path))
    program = load_program(model)
    _, report = simulate(program, samples(m, _images(), 2, seed=1), model=model,
                         config=SimulateConfig())
    s = report.summary
    for out in program.outputs:
        equal, worst = s[f"ort_equal_fraction:{out}"], s[f"ort_worst_step:{out}"]
        if s["float_islands"] == 0:
            assert equal == 1.0 and worst == 0, (out, equal, worst)
        else:
            assert equal >= 0.999 and worst <= 1, (out, equal, worst)
    integer = [c for c in report.candidates if c.action == "integer"]
    assert integer and all(c.details.get("max_step", 0) == 0 for c in integer)


def test_zoo_package_round_trip(zoo_q, tmp_path):
    from zoo.cli_args import samples

    m, path = zoo_q("torch_convtranspose_decoder")
    program = load_program(onnx.load(str(path)))
    write_package(program, tmp_path / "pkg")
    feed = samples(m, _images(), 1, seed=2)[0]
    a, b = Simulator(program).run(feed), Simulator(read_package(tmp_path / "pkg")).run(feed)
    assert all(np.array_equal(a.ints[k], b.ints[k]) for k in a.ints)
    assert all(np.array_equal(a.outputs[k], b.outputs[k]) for k in a.outputs)


def _images():
    import zoo

    return zoo.images()
