"""``quantize --integer-only`` on conv nets of the zoo: no float island is left but ops without an exact
integer form (Softmax, and the float ops after it), the activations are look-up tables, and simulate
equals onnxruntime's optimized run of the model bit for bit."""

from __future__ import annotations

import onnx
import pytest

from onnxsq.cli.main import run
from onnxsq.simulate.api import SimulateConfig, simulate
from onnxsq.simulate.program import load_program

# HardSwish/HardSigmoid and a squeeze-excite Mul (mobilenetv3), SiLU x * sigmoid(x) and a Softmax (yolov8), whose
# box decode and output Concat (boxes beside scores) stay float (placement.FLOAT_TAIL)
MODELS = {"torch_mobilenetv3_block": set(), "torch_yolov8_like": {"Softmax", "Concat"}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_integer_only_leaves_no_island(zoo, tmp_path, name):
    import zoo as zoo_pkg
    from zoo.cli_args import preprocess_args, samples

    m = next((z for z in zoo if z.name == name), None)
    if m is None:
        pytest.skip(f"{name} is not in the zoo cache (torch exports are made by `make zoo` in .venv)")
    out = tmp_path / f"{name}.q.onnx"
    argv = ["quantize", str(m.path), "--calib", str(m.path.parent.parent / "images"), "--calib-count", "4",
            *preprocess_args(m), "--report-samples", "0", "--integer-only", "-o", str(out), "-q"]
    assert run(argv) == 0
    model = onnx.load(str(out))
    program = load_program(model)
    _, report = simulate(program, samples(m, zoo_pkg.images(), 2, seed=1), model=model, config=SimulateConfig())
    s = report.summary
    islands = {c.op for c in report.candidates if c.action in ("float island", "float tail")}
    assert islands <= MODELS[name] | {"Identity"}, islands  # a layer's first op without an integer form
    float_ops = {st.op for lay in program.layers if lay.kind in ("float", "tail") for st in lay.steps}
    assert not float_ops & {"Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu"}, float_ops
    assert s["table_layers"] > 0
    for o in program.outputs:
        assert s[f"ort_equal_fraction:{o}"] == 1.0 and s[f"ort_worst_step:{o}"] == 0, o
