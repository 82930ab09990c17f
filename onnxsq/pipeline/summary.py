"""The per-stage table: metric, conv sparsity, size on disk, share of MACs in int8 — as data, JSON, Markdown.

One :class:`StageRow` per model the pipeline made (row ``00-input`` is the recipe's starting model).
Conv sparsity is ``zeros / weights`` over Conv/ConvTranspose weights (:mod:`onnxsq.sparsity`, which
also reads quantized weights through their DequantizeLinear); the MAC share is from
:mod:`onnxsq.pipeline.macs`. Nothing here renders to a terminal: the CLI does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..report import write_json
from ..sparsity import CONV_OPS, totals, weight_stats
from .macs import count_macs

METRIC_KEYS = {  # evaluate()'s summary key → column name, first match wins
    "mean_iou": "mIoU", "miou": "mIoU", "top1": "accuracy", "accuracy": "accuracy", "pixel_accuracy": "pixel acc",
}


@dataclass
class StageRow:
    stage: str  # "00-input", "01-l2", ...
    kind: str  # input | train | threshold | optimize | quantize
    status: str  # ran | cached | resumed | kept (before --from) | input
    model: str  # file name inside the work directory (or the recipe's model path)
    size_bytes: int
    conv_zeros: int
    conv_params: int
    macs: int
    int8_macs: int
    metric_name: str | None = None
    metric: float | None = None
    seconds: float | None = None
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # conv layer → zero fraction
    notes: list[str] = field(default_factory=list)

    @property
    def conv_sparsity(self) -> float | None:
        return self.conv_zeros / self.conv_params if self.conv_params else None

    @property
    def int8_share(self) -> float | None:
        return self.int8_macs / self.macs if self.macs else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_sparsity"] = self.conv_sparsity
        d["int8_share"] = self.int8_share
        return d


def file_size(path: Path) -> int:
    """Bytes on disk of a model, with its external data file if any."""
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return size + (data.stat().st_size if data.exists() else 0)


def model_row(stage: str, kind: str, status: str, model: onnx.ModelProto, path: Path) -> StageRow:
    """Sparsity, size and MACs of one stage's model (the metric is filled in by the runner)."""
    stats = weight_stats(model)
    conv = totals(stats, ops=CONV_OPS)
    macs = count_macs(model)
    row = StageRow(stage, kind, status, path.name, file_size(path), conv.zeros, conv.params, macs.total, macs.int8,
                   layer_sparsity={s.name: s.zero_fraction for s in stats if s.op in CONV_OPS})
    if macs.unknown:
        row.notes.append(f"MACs unknown (dynamic shapes) for: {', '.join(macs.unknown)}")
    return row


def metric_of(summary: dict[str, Any]) -> tuple[str | None, float | None]:
    """The headline number of an evaluate() report summary: mIoU for segmentation, else accuracy."""
    for key, name in METRIC_KEYS.items():
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, float(value)
    return None, None


COLUMNS = ("stage", "status", "metric", "conv zeros", "size", "int8 MACs")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def table_rows(rows: Sequence[StageRow], *, macs: bool = False) -> tuple[list[str], list[list[str]]]:
    """Column names (the metric column named after the metric) and formatted cells.

    ``macs`` adds the MAC count per sample (the Markdown table has room for it; a terminal may not).
    """
    names = {r.metric_name for r in rows if r.metric_name}
    metric_col = "/".join(sorted(names)) if names else "metric"
    cols = [metric_col if c == "metric" else c for c in COLUMNS] + (["MACs"] if macs else [])
    out = []
    for r in rows:
        timed = r.seconds is not None and r.status in ("ran", "resumed")
        status = r.status + (f" {r.seconds:.1f}s" if timed else "")
        metric = "–" if r.metric is None else f"{100 * r.metric:.2f}"
        cells = [r.stage, status, metric, _pct(r.conv_sparsity), _size(r.size_bytes), _pct(r.int8_share)]
        out.append(cells + ([_count(r.macs)] if macs else []))
    return cols, out


def to_markdown(rows: Sequence[StageRow], title: str = "") -> str:
    cols, cells = table_rows(rows, macs=True)
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    notes = [f"- {r.stage}: {n}" for r in rows for n in r.notes]
    if notes:
        lines += ["", *notes]
    lines.append("")
    lines.append("Metric in percent on the validation data; status: ran/resumed (with the stage's time), cached "
                 "(unchanged, skipped), kept (before --from); conv zeros = zero Conv/ConvTranspose weights / all of "
                 "them; int8 MACs = share of the Conv/ConvTranspose/Gemm/MatMul multiply-accumulates whose input and "
                 "weight both come through 8-bit DequantizeLinear; MACs per sample.")
    return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[StageRow], workdir: Path, *, recipe: str = "") -> dict[str, Path]:
    """``summary.json`` and ``summary.md`` in ``workdir`` (both written atomically)."""
    data = {"recipe": recipe, "stages": [r.to_dict() for r in rows]}
    js = write_json(data, workdir / "summary.json")
    md = workdir / "summary.md"
    tmp = md.with_name(".summary.md.tmp")
    tmp.write_text(to_markdown(rows, title=f"onnxsq pipeline: {Path(recipe).name}" if recipe else ""))
    os.replace(tmp, md)
    return {"json": js, "markdown": md}
