"""sample_models/: the seeded generator is deterministic and the committed models are its output."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"


def _generator():
    spec = importlib.util.spec_from_file_location("sample_models_generate", SAMPLES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()
HAS_TORCH = gen.have_torch()
EXPECTED_OUTPUT = {  # output shape for a batch of 2
    "jacintonet_seg": (2, 5, 64, 64), "jacintonet_seg_op17": (2, 5, 64, 64), "digits_cnn": (2, 10),
    "small_cls_torch_op11": (2, 10), "small_cls_torch": (2, 10), "small_cls_torch_op17": (2, 10),
}
EXPECTED_OPSET = {"jacintonet_seg": 11, "jacintonet_seg_op17": 17, "digits_cnn": 13,
                  "small_cls_torch_op11": 11, "small_cls_torch": 13, "small_cls_torch_op17": 17}


def _needs_torch(name: str) -> None:
    if name in gen.TORCH_EXPORTED and not HAS_TORCH:
        pytest.skip("torch is not installed here (the torch exports are checked in .venv)")


def test_every_model_is_listed():
    assert set(gen.ALL) == set(EXPECTED_OUTPUT)
    assert {p.stem for p in SAMPLES.glob("*.onnx")} == set(EXPECTED_OUTPUT)


def test_committed_models_stay_small():
    assert sum(p.stat().st_size for p in SAMPLES.glob("*.onnx")) < 3 * 2**20


@pytest.mark.parametrize("name", sorted(gen.ALL))
def test_generator_is_deterministic_and_matches_the_committed_file(name):
    _needs_torch(name)
    first, second = gen.build(name), gen.build(name)
    assert first == second, "same seed, different bytes"
    committed = (SAMPLES / f"{name}.onnx").read_bytes()
    if name in gen.TORCH_EXPORTED:
        import torch

        made_with = onnx.load_from_string(committed).producer_version
        if made_with != torch.__version__.split("+")[0]:
            pytest.skip(f"committed with torch {made_with}, this is torch {torch.__version__}")
        if first != committed:
            # torch's CPU kernels round differently on other processors (AVX2 / AVX-512): the BN
            # running statistics the generator measures may differ in the last bits, nothing else
            _assert_same_up_to_float_rounding(onnx.load_from_string(first), onnx.load_from_string(committed), name)
            return
    assert first == committed, f"{name}.onnx differs from the generator's output: rerun sample_models/generate.py"


def _assert_same_up_to_float_rounding(made: onnx.ModelProto, committed: onnx.ModelProto, name: str) -> None:
    from onnx import numpy_helper

    hint = f"{name}.onnx differs from the generator's output: rerun sample_models/generate.py"
    assert list(made.graph.node) == list(committed.graph.node), hint
    assert [i.name for i in made.graph.initializer] == [i.name for i in committed.graph.initializer], hint
    for a, b in zip(made.graph.initializer, committed.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{hint} ({a.name})")


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_committed_model_is_valid_and_runs(name):
    pytest.importorskip("onnxruntime")
    from onnxsq.runtime import make_session
    from onnxsq.verify import random_feeds

    path = SAMPLES / f"{name}.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10, "onnxruntime 1.19 loads IR <= 10"
    assert {o.domain: o.version for o in model.opset_import} == {"": EXPECTED_OPSET[name]}
    assert all(n.name for n in model.graph.node), "every node has a name"
    assert len({n.name for n in model.graph.node}) == len(model.graph.node), "node names are unique"
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)
    (y,) = make_session(str(path)).run(None, random_feeds(model, seed=0, batch=2))
    assert y.shape == EXPECTED_OUTPUT[name]
    assert np.all(np.isfinite(y)) and float(np.std(y)) > 1e-3


@pytest.mark.parametrize("name", ["small_cls_torch", "jacintonet_seg"])
def test_batchnorm_statistics_are_not_trivial(name):
    model = onnx.load(str(SAMPLES / f"{name}.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        mean, var = inits[node.input[3]], inits[node.input[4]]
        assert np.any(mean != 0) and np.any(var != 1), node.name


def test_jacintonet_has_the_promised_structure():
    model = onnx.load(str(SAMPLES / "jacintonet_seg.onnx"))
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node}
    ops = [n.op_type for n in model.graph.node]
    assert {"ConvTranspose", "Resize", "MaxPool", "Add"} <= set(ops)
    convs = [attrs[n.name] for n in model.graph.node if n.op_type == "Conv"]
    assert any(a["group"] > 1 for a in convs) and any(a["strides"] == [2, 2] for a in convs)
    (ct,) = [attrs[n.name] for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert ct["group"] > 1
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_digits_cnn_uses_only_ops_with_cpu_gradients():
    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    trainable = {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                 "Reshape", "Gemm"}
    assert {n.op_type for n in model.graph.node} <= trainable
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, 8, 8]


def test_generator_script_writes_files(tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.run([sys.executable, str(SAMPLES / "generate.py"), "--out", str(out), "--only", "digits_cnn",
                           "small_cls_torch"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "digits_cnn.onnx").read_bytes() == (SAMPLES / "digits_cnn.onnx").read_bytes()
    if HAS_TORCH:
        assert (out / "small_cls_torch.onnx").exists()
    else:
        assert "skip small_cls_torch: torch is not installed" in proc.stdout
        assert not (out / "small_cls_torch.onnx").exists()
