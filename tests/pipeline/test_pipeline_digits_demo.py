"""`make demo`'s recipe meets issue 6's bar: >= 80% conv zeros, power-of-two int8, within 1.5 points of dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxsq import runtime

RECIPE = Path(__file__).resolve().parents[2] / "sample_models" / "recipes" / "digits.toml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not runtime.has_training(), reason="the digits flow trains: needs onnxruntime-training"),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the recipe for the tests below: (result, work directory)."""
    pytest.importorskip("sklearn")
    from onnxsq.pipeline import run_pipeline

    work = tmp_path_factory.mktemp("digits") / "work"
    return run_pipeline(RECIPE, work), work


def test_digits_demo_recipe_end_to_end(demo):
    result, work = demo
    rows = {r.stage.split("-", 1)[1]: r for r in result.rows}
    dense = max(rows["l2"].metric, rows["l1"].metric)
    final = result.rows[-1]
    assert final.kind == "quantize"
    assert final.conv_zeros / final.conv_params >= 0.80
    assert final.int8_macs == final.macs > 0
    assert final.metric >= dense - 1.5, (final.metric, dense)
    q = onnx.load(str(work / final.model))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    scales = [inits[n.input[1]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales
    for scale in scales:  # every QDQ scale is an exact power of two
        mant, _ = np.frexp(scale.astype(np.float64))
        assert np.all(mant == 0.5)


def _readme_digits_table() -> dict[str, list[str]]:
    text = (RECIPE.parents[2] / "README.md").read_text()
    start = text.index("onnxsq, `make demo`")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif rows and not line.startswith("|"):
            break
    return rows


def test_readme_digits_table_is_what_the_demo_prints(demo):
    """The README's numbers for `make demo` are the demo's (the same seeded recipe, the same data)."""
    result, _ = demo
    rows = {r.stage.split("-", 1)[1]: r for r in result.rows}
    table = _readme_digits_table()

    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    dense = rows["l1"]
    assert table["dense (L2 → L1)"][0] == pct(dense.metric)
    # thresholded before fine-tuning the net is near chance (~28%): which of its 450 test images sit on a
    # decision boundary flips with the CPU's float kernels (29.11 on the AMD box the README was written on,
    # 27.11 on an Intel Xeon; every other row is the same on both), so that one number is held within 3 points
    shown, sparsity = table["thresholded, before fine-tuning"][:2]
    assert abs(float(shown) - 100 * rows["threshold"].metric) <= 3.0, (shown, rows["threshold"].metric)
    assert sparsity == f"{100 * rows['threshold'].conv_sparsity:.1f}%"
    assert table["sparse fine-tuned"][:2] == [pct(rows["sparse"].metric), f"{100 * rows['sparse'].conv_sparsity:.1f}%"]
    ptq = rows["quantize"]
    # the int8 row is onnxruntime's integer kernels, which differ by CPU too (98.89 on the AMD box without VNNI,
    # 98.67 on an Intel Xeon: one image of 450): held within 0.5 points, its delta to the row shown above
    shown, sparsity = table["sparse + power-of-two int8 (PTQ)"][:2]
    value, delta = shown.split(" (")
    assert abs(float(value) - 100 * ptq.metric) <= 0.5, (shown, ptq.metric)
    assert delta.rstrip(")") == f"{float(value) - float(pct(dense.metric)):+.2f}".replace("-", "−")
    assert sparsity == f"{100 * ptq.conv_sparsity:.1f}%"
