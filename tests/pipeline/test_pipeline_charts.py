"""The pipeline's charts read as meant: value labels clear of the line markers, legends off the bars and
right under the axes (no empty band). Checked on the drawn figures' geometry, in display pixels."""

from __future__ import annotations

import pytest

from onnxsq.pipeline.summary import StageRow

STAGES = [("00-input", 0.113, 0.0, 0.0), ("01-l2", 0.993, 0.0, 0.0), ("02-l1", 0.993, 0.0, 0.0),
          ("03-threshold", 0.273, 0.825, 0.0), ("04-sparse", 0.987, 0.825, 0.0),
          ("05-optimize", 0.987, 0.825, 0.0), ("06-quantize", 0.989, 0.825, 1.0)]  # the digits demo's


def demo_rows() -> list[StageRow]:
    rows = []
    for stage, metric, sparsity, int8 in STAGES:
        layers = {"conv1": 0.0, "conv2": sparsity * 0.97, "conv3": min(1.0, sparsity * 1.03)}
        rows.append(StageRow(stage, "train", "ran", f"{stage}.onnx", 60000, int(13968 * sparsity), 13968, 451904,
                             int(451904 * int8), "accuracy", metric, layer_sparsity=layers))
    return rows


@pytest.fixture
def plt():
    pytest.importorskip("matplotlib")
    from onnxsq.pipeline.charts import _pyplot

    return _pyplot()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_metric_labels_clear_the_markers_and_the_legend_sits_under_the_stage_names(plt):
    from onnxsq.pipeline.charts import metric_figure

    fig = metric_figure(plt, demo_rows())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax, twin = fig.axes[0], fig.axes[1]
    labels = [t for t in ax.texts]
    assert [t.get_text() for t in labels] == ["11.3", "99.3", "99.3", "27.3", "98.7", "98.7", "98.9"]
    for line in twin.get_lines():
        size = line.get_markersize() * fig.dpi / 72  # points → pixels (the marker's full width)
        for x, y in line.get_xydata():
            px, py = twin.transData.transform((x, y))
            for t in labels:
                box = t.get_window_extent(renderer)
                marker = type(box).from_extents(px - size / 2, py - size / 2, px + size / 2, py + size / 2)
                assert not _overlap(box, marker), (t.get_text(), line.get_label(), (x, y))
    (legend,) = fig.legends
    lbox = legend.get_window_extent(renderer)
    ticks = ax.get_xaxis().get_tightbbox(renderer)
    assert lbox.y1 <= ticks.y0 + 1, "the legend overlaps the stage names"
    gap = ticks.y0 - lbox.y1
    assert gap < 0.06 * fig.bbox.height, f"an empty band of {gap:.0f} px between the stage names and the legend"
    assert lbox.y0 >= -1, "the legend is cut off at the bottom"
    plt.close(fig)


def test_sparsity_legend_covers_no_bar(plt):
    from onnxsq.pipeline.charts import sparsity_figure

    fig = sparsity_figure(plt, demo_rows())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    lbox = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_height() > 0]
    assert bars and not any(_overlap(lbox, b) for b in bars)
    assert lbox.x1 <= fig.bbox.width + 1 and lbox.y0 >= 0, "the legend is cut off"
    top = max(b.y1 for b in bars)
    assert top > lbox.y0 or lbox.x0 >= ax.get_window_extent(renderer).x1  # beside the plot, not above it
    plt.close(fig)
