"""PNG charts of a pipeline run: per-layer conv sparsity by stage, and the metric by stage.

matplotlib is optional: without it :func:`write_charts` writes nothing and returns the reason, which
the runner turns into a warning (never a silent skip).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .summary import StageRow

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def write_charts(rows: Sequence[StageRow], workdir: Path) -> tuple[list[Path], str | None]:
    """Write ``sparsity.png`` and ``metric.png``; returns (written files, why charts were skipped)."""
    try:
        plt = _pyplot()
    except ImportError as exc:
        return [], f"matplotlib is not installed ({exc}); pip install matplotlib for sparsity.png and metric.png"
    written = [_sparsity(plt, rows, workdir / "sparsity.png")]
    written.append(_metric(plt, rows, workdir / "metric.png"))
    return written, None


def _save(plt, fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def _sparsity(plt, rows: Sequence[StageRow], path: Path) -> Path:
    return _save(plt, sparsity_figure(plt, rows), path)


def sparsity_figure(plt, rows: Sequence[StageRow]):
    """Grouped bars, one group per layer, one bar per stage; the legend right of the plot, off the bars."""
    layers: list[str] = []
    for r in rows:
        layers += [n for n in r.layer_sparsity if n not in layers]
    width_in = min(16.0, max(6.0, 0.3 * len(layers) * max(1, len(rows)) ** 0.5 + 2)) + 1.6  # + the legend
    fig, ax = plt.subplots(figsize=(width_in, 4.2))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(xs, [100 * r.layer_sparsity.get(n, 0.0) for n in layers], width, label=r.stage)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("zero weights (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-layer conv weight sparsity by stage")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    return fig


def _metric(plt, rows: Sequence[StageRow], path: Path) -> Path:
    return _save(plt, metric_figure(plt, rows), path)


def metric_figure(plt, rows: Sequence[StageRow]):
    """The metric as bars (its value inside the top of each bar, clear of the line markers at the
    bars' tops), conv sparsity and int8 MAC share as lines; the legend at the bottom, right under the
    stage names."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 1), 4.6))
    xs = list(range(len(rows)))
    names = sorted({r.metric_name for r in rows if r.metric_name}) or ["metric"]
    values = [100 * r.metric if r.metric is not None else 0.0 for r in rows]
    bars = ax.bar(xs, values, 0.6, color="tab:blue", label="/".join(names))
    for b, r in zip(bars, rows):
        inside = r.metric is not None and b.get_height() >= 20
        ax.annotate("n/a" if r.metric is None else f"{100 * r.metric:.1f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, -6 if inside else 2),
                    textcoords="offset points", ha="center", va="top" if inside else "bottom", fontsize=8,
                    color="white" if inside else "black", fontweight="bold" if inside else "normal")
    ax.set_ylabel(f"{'/'.join(names)} (%)")
    ax.set_ylim(0, 105)
    ax.set_xticks(xs)
    ax.set_xticklabels([r.stage for r in rows], rotation=30, ha="right", fontsize=8)
    twin = ax.twinx()
    twin.plot(xs, [100 * (r.conv_sparsity or 0.0) for r in rows], "o-", color="tab:orange", label="conv sparsity")
    twin.plot(xs, [100 * (r.int8_share or 0.0) for r in rows], "s--", color="tab:green", label="int8 MACs")
    twin.set_ylabel("conv sparsity / int8 MACs (%)")
    twin.set_ylim(0, 105)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.set_title("Metric, sparsity and int8 share by stage")
    legend = fig.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower center",
                        bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    fig.canvas.draw()  # the legend's height: the axes and their stage names take the rest, right above it
    height = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.bbox.height
    fig.tight_layout(rect=(0.0, height, 1.0, 1.0))
    return fig
