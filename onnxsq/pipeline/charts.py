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
    layers: list[str] = []
    for r in rows:
        layers += [n for n in r.layer_sparsity if n not in layers]
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.3 * len(layers) * max(1, len(rows)) ** 0.5 + 2)), 4.2))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(xs, [100 * r.layer_sparsity.get(n, 0.0) for n in layers], width, label=r.stage)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("zero weights (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-layer conv weight sparsity by stage")
    ax.legend(fontsize=8, ncol=min(4, len(rows)))
    fig.tight_layout()
    return _save(plt, fig, path)


def _metric(plt, rows: Sequence[StageRow], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 1), 4.6))
    xs = list(range(len(rows)))
    names = sorted({r.metric_name for r in rows if r.metric_name}) or ["metric"]
    values = [100 * r.metric if r.metric is not None else 0.0 for r in rows]
    bars = ax.bar(xs, values, 0.6, color="tab:blue", label="/".join(names))
    for b, r in zip(bars, rows):
        ax.annotate(
            "n/a" if r.metric is None else f"{100 * r.metric:.1f}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
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
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    ax.set_title("Metric, sparsity and int8 share by stage")
    fig.tight_layout()
    return _save(plt, fig, path)
