"""onnxsq.report: candidates, summaries and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxsq.errors import InvalidOptionError
from onnxsq.report import Candidate, Report, write_json


def test_add_and_skipped():
    r = Report("fold-batchnorm")
    done = r.add("conv1", "Conv", "folded", bn="bn1")
    left = r.add("bn2", "BatchNormalization", "skipped", "its input is a graph output")
    assert isinstance(done, Candidate) and done.changed and not left.changed
    assert r.skipped() == [left]
    assert done.details == {"bn": "bn1"} and left.reason == "its input is a graph output"


def test_to_dict_is_plain_json():
    r = Report("threshold")
    r.add("conv", "Conv", "thresholded", shape=(4, 3), t=np.float32(0.5), zeros=np.int64(7),
          hist=np.arange(3), where=Path("/x/y"), bad=float("nan"), inf=np.float64("inf"))
    r.summary.update(sparsity=np.float64(0.25), layers=[np.int32(1)])
    r.warnings.append("--foo is ignored")
    d = json.loads(r.to_json())
    cand = d["candidates"][0]
    assert cand["details"] == {"shape": [4, 3], "t": 0.5, "zeros": 7, "hist": [0, 1, 2], "where": "/x/y",
                               "bad": "nan", "inf": "inf"}
    assert d["summary"] == {"sparsity": 0.25, "layers": [1]}
    assert d["pass_name"] == "threshold" and d["warnings"] == ["--foo is ignored"]
    assert r.to_dict() == d


def test_write_is_atomic_json(tmp_path):
    r = Report("inspect")
    r.add("a", "Conv", "listed", x=1)
    path = tmp_path / "r.json"
    path.write_text("old")
    assert r.write(path) == path
    assert json.loads(path.read_text())["candidates"][0]["name"] == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_write_json_refuses_objects_it_cannot_write(tmp_path):
    with pytest.raises(TypeError):
        write_json({"x": object()}, tmp_path / "bad.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing_dir", "is_dir"])
def test_unwritable_report_path_is_a_one_line_error(where, tmp_path):
    path = tmp_path / "nope" / "r.json" if where == "missing_dir" else tmp_path
    with pytest.raises(InvalidOptionError, match="cannot write the report") as info:
        Report("inspect").write(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
