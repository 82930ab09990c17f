"""``quantize --report-html``: a self-contained page with the SQNR curve, sensitivity bars, the layer table
and one histogram per calibrated activation with its representable range; rendered by headless Chromium
where the machine has it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from onnxsq.cli.report_html import render


@pytest.fixture
def quantized(run_cli, model_and_data, tmp_path):
    model, data = model_and_data
    page, rep = tmp_path / "r.html", tmp_path / "r.json"
    res = run_cli("quantize", model, "--calib", data, "-o", tmp_path / "q.onnx", "--sensitivity",
                  "--report-html", page, "--report", rep, "-q")
    assert res.code == 0, res.err
    return page, json.loads(rep.read_text())


def test_page_has_every_part_and_fetches_nothing(quantized):
    page, report = quantized
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=\"?(https?:)?//", text)  # self-contained
    layers = [c for c in report["candidates"] if c["action"] == "quantized"]
    hists = [c for c in layers if "histogram" in c["details"]]
    assert hists and text.count('class="hist"') == len(hists)
    assert text.count("<circle") == sum("sqnr_db" in c["details"] for c in layers)  # one point per layer
    assert text.count('fill="#d9822b"') == sum("sensitivity_db" in c["details"] for c in layers)
    for c in layers:
        assert c["name"] in text
    assert report["summary"]["report_html"].endswith("r.html")


def test_histogram_marks_the_representable_range():
    hist = {"exp": 3, "pos": [0] * 63 + [5], "neg": [1] + [0] * 63, "min": -0.1, "max": 7.9}
    c = {"name": "t", "op": "Conv", "action": "quantized",
         "details": {"histogram": hist, "shift": 4, "bits": 8, "signed": True, "range": [-0.1, 7.9],
                     "clipped": 0.0}}
    text = render({"candidates": [c], "summary": {}})
    # int8 at shift 4 holds [-8, 7.9375]; the histogram spans [-8, 8): the marks sit at the two ends
    xs = [float(x) for x in re.findall(r'<line x1="([0-9.]+)" x2="\1" y1="0" y2="90" stroke="#b00"', text)]
    assert xs == pytest.approx([0.0, 240 * (7.9375 / 8 + 1) / 2], abs=0.1)
    assert "clipped 0%" in text and "2<sup>3</sup>" in text


def test_without_measurements_the_page_says_so():
    text = render({"candidates": [], "summary": {}})
    assert "not measured" in text and "none: the estimator kept no histograms" in text


def test_what_each_step_changed_is_listed():
    text = render({"candidates": [], "summary": {"weights_rounded": 3, "finetune_gain_db": 1.25,
                                                 "int16_tensors": ["conv1.weight", "r1"]}})
    assert "weights rounded by GPTQ: 3" in text and "fine-tuning (held-out images): 1.25" in text
    line = next(ln for ln in text.split("<li>") if ln.startswith("tensors at 16 bits (--int16)"))
    assert "conv1.weight" in line and "r1" in line


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless Chromium on this machine (Debian: chromium)")
def test_chromium_renders_it(quantized, tmp_path):
    from PIL import Image

    page, _ = quantized
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,1400",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape == (1400, 1000)
    dark = pixels < 128
    assert dark.mean() > 0.01  # text and charts drawn, not a blank page
    assert dark[:, :500].any() and dark[700:, :].any()  # across the width and down the page


def test_inspect_html_lists_every_layer(run_cli, quantized, tmp_path):
    page, report = quantized
    qmodel = page.with_name("q.onnx")
    out, rep = tmp_path / "i.html", tmp_path / "i.json"
    res = run_cli("inspect", qmodel, "--html", out, "--report", rep)
    assert res.code == 0, res.err
    listed = [c for c in json.loads(rep.read_text())["candidates"] if c["action"] == "listed"]
    text = out.read_text()
    assert listed and all(f"<td>{c['name']}</td>" in text for c in listed)
    assert "<th>bits</th>" in text and "<th>zero_fraction</th>" in text
