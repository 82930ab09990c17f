"""The parameters file: round trip, validation, and reading parameters back out of a QDQ model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxsq.errors import DataError
from onnxsq.params import TensorQuant, params_from_model, read_params, write_params
from onnxsq.passes.quantize import QuantizeConfig, quantize


def test_round_trip(tmp_path):
    params = {"a": TensorQuant("a", "activation", 8, False, 5, None, (0.0, 7.5), "mse"),
              "w": TensorQuant("w", "weight", 4, True, [3, 4], 0, (-1.0, 1.0), "minmax")}
    path = write_params(params, tmp_path / "p.json")
    back = read_params(path)
    assert back == params
    assert json.loads(path.read_text())["format"] == "onnxsq-quant-params"
    assert back["w"].scale.tolist() == [0.125, 0.0625]


@pytest.mark.parametrize("text, match", [
    ("{", "not a JSON"),
    ('{"tensors": {}}', "not an onnxsq parameters file"),
    ('{"format": "onnxsq-quant-params", "tensors": {"a": {"bits": 8}}}', "needs bits, signed and shift"),
    ('{"format": "onnxsq-quant-params", "tensors": {"a": {"bits": 8, "signed": 1, "shift": 3}}}', "true or false"),
    ('{"format": "onnxsq-quant-params", "tensors": {"a": {"bits": 8, "signed": true, "shift": 2.5}}}', "integer"),
    ('{"format": "onnxsq-quant-params", "tensors": {"a": {"bits": 99, "signed": true, "shift": 2}}}', "2..32"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_params(path)
    with pytest.raises(DataError, match="no such parameters file"):
        read_params(tmp_path / "missing.json")


def test_params_from_model_matches_what_quantize_wrote(conv_model, tmp_path):
    rng = np.random.default_rng(0)
    data = [{"input": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    q, _ = quantize(conv_model(), data, config=QuantizeConfig(per_channel=True), params_out=tmp_path / "p.json")
    written = read_params(tmp_path / "p.json")
    found = params_from_model(q)
    assert set(found) == set(written)
    for name, p in written.items():
        assert (found[name].bits, found[name].signed, found[name].shift, found[name].kind) == \
            (p.bits, p.signed, p.shift, p.kind), name
