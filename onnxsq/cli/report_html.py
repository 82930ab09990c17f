"""``quantize --report-html``: one self-contained page on where the fidelity goes.

Drawn from the quantize report alone (plain SVG and CSS, no script, nothing fetched): the per-layer SQNR
through the network (each quantized tensor against float, errors accumulated as on the target), the
sensitivity bars (output SQNR with that layer alone quantized, where ``--sensitivity`` measured it), what
each step changed (folding, equalization, bias correction, layers kept float for ``--target-sqnr``), the
layer table, and each activation's calibration histogram (calibration's linear bins over ``[0, 2**exp)``
per sign, summed to 64, drawn signed with counts on a log scale) with the range its shift can represent
and the clipped fraction.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from ..report import write_atomic

W, H, PAD = 760, 220, 40
STEP_KEYS = (
    ("batchnorm_folded_first", "BatchNorm folded into layers"),
    ("affine_folded_first", "constant Mul/Add folded into layers"),
    ("equalized_pairs", "layer pairs equalized (power-of-two factors)"),
    ("bias_corrected", "biases corrected for the weights' mean error"),
    ("weights_rounded", "weights rounded by GPTQ"),
    ("finetune_gain_db", "dB gained by label-free fine-tuning (held-out images)"),
    ("kept_float_for_target", "layers kept float for --target-sqnr"),
    ("int16_for_target", "layers at 16 bits for --target-sqnr --promote int16"),
    ("int16_tensors", "tensors at 16 bits (--int16)"),
    ("per_channel_fallback", "per-tensor weights (the opset allowed no per-channel)"),
)
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.bad{color:#b00}
.hist{display:inline-block;margin:4px 8px 12px 0;vertical-align:top}.hist p{margin:0;font-size:11px;width:240px}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _layers(report: dict) -> list[dict]:
    """The layers a row each: what quantize quantized, or every layer ``inspect`` listed."""
    return [c for c in report.get("candidates", []) if c.get("action") in ("quantized", "listed")]


def _line_chart(points: list[tuple[str, float]], title: str, unit: str = "dB") -> str:
    """An SVG polyline of ``points`` (label, value) in order, each point titled with its label and value."""
    vals = [v for _, v in points]
    if not vals:
        return ""
    lo, hi = min(vals + [0.0]), max(vals)
    hi = hi if hi > lo else lo + 1
    xs = [PAD + i * (W - 2 * PAD) / max(1, len(vals) - 1) for i in range(len(vals))]
    ys = [H - PAD - (v - lo) / (hi - lo) * (H - 2 * PAD) for v in vals]
    grid = "".join(
        f'<line x1="{PAD}" x2="{W - PAD}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        f'<text x="4" y="{y + 4:.1f}">{v:.0f}</text>'
        for v in _ticks(lo, hi) for y in [H - PAD - (v - lo) / (hi - lo) * (H - 2 * PAD)])
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1f6fb2"><title>{_esc(n)}: {v:g} {unit}'
                   f'</title></circle>' for (n, v), x, y in zip(points, xs, ys))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return (f'<svg width="{W}" height="{H}" role="img" aria-label="{_esc(title)}">{grid}'
            f'<polyline points="{path}" fill="none" stroke="#1f6fb2" stroke-width="1.5"/>{dots}'
            f'<text x="{PAD}" y="14">{_esc(title)} ({unit}; layers in graph order →)</text></svg>')


def _ticks(lo: float, hi: float) -> list[float]:
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9)))
    step *= 2 if (hi - lo) / step < 4 else 1
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def _bars(items: list[tuple[str, float]], title: str) -> str:
    """Horizontal bars, most sensitive (lowest SQNR alone) first."""
    if not items:
        return ""
    items = sorted(items, key=lambda kv: kv[1])[:30]
    hi = max(v for _, v in items) or 1.0
    row = 16
    bars = "".join(
        f'<text x="0" y="{24 + i * row + 11}">{_esc(n[:28])}</text>'
        f'<rect x="200" y="{24 + i * row}" width="{max(1.0, v / hi * (W - 280)):.1f}" height="{row - 4}" '
        f'fill="#d9822b"><title>{_esc(n)}: {v:g} dB</title></rect>'
        f'<text x="{206 + max(1.0, v / hi * (W - 280)):.1f}" y="{24 + i * row + 11}">{v:g}</text>'
        for i, (n, v) in enumerate(items))
    return (f'<svg width="{W}" height="{30 + len(items) * row}" role="img" aria-label="{_esc(title)}">'
            f'<text x="0" y="14">{_esc(title)}</text>{bars}</svg>')


def _histogram(c: dict) -> str:
    """One tensor's calibration histogram, signed, log counts, with its representable range marked."""
    d, name = c["details"], c["name"]
    h = d.get("histogram")
    if not h:
        return ""
    bins = len(h["pos"])
    counts = list(reversed(h["neg"])) + list(h["pos"])
    top = math.log10(1 + max(counts)) or 1.0
    w, hh = 240, 90
    bw = w / len(counts)
    top_edge = 2.0 ** h["exp"]
    bars = "".join(f'<rect x="{i * bw:.2f}" y="{hh - math.log10(1 + n) / top * hh:.1f}" width="{bw:.2f}" '
                   f'height="{math.log10(1 + n) / top * hh:.1f}" fill="#6a8caf"/>' for i, n in enumerate(counts) if n)
    marks = ""
    shift, bits = _num(d.get("shift")), _num(d.get("bits"))
    if shift is not None and bits is not None:
        step = 2.0 ** -shift
        qmax = 2 ** (int(bits) - (1 if d.get("signed") else 0)) - 1
        qmin = -qmax - 1 if d.get("signed") else 0
        for v, col in ((qmin * step, "#b00"), (qmax * step, "#b00")):
            if -top_edge <= v <= top_edge:
                x = (v / top_edge + 1) * w / 2
                marks += f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{hh}" stroke="{col}" stroke-width="1.5"/>'
    clipped = _num(d.get("clipped"))
    caption = (f"<b>{_esc(name)}</b> {_esc(c.get('op'))}: shift {_esc(d.get('shift'))}, "
               f"{'int' if d.get('signed') else 'uint'}{_esc(d.get('bits'))}, range {_esc(d.get('range'))}"
               + (f", clipped {clipped * 100:.3g}%" if clipped is not None else "")
               + f"; |x| bins to 2<sup>{h['exp']}</sup>, {bins} per sign")
    axis = (f'<text x="0" y="{hh + 12}">-{top_edge:g}</text><text x="{w / 2 - 3}" y="{hh + 12}">0</text>'
            f'<text x="{w - 24}" y="{hh + 12}">{top_edge:g}</text>')
    return (f'<div class="hist"><svg width="{w}" height="{hh + 14}" role="img" aria-label="histogram of '
            f'{_esc(name)}"><line x1="{w / 2}" x2="{w / 2}" y1="0" y2="{hh}" stroke="#ccc"/>{bars}{marks}{axis}'
            f"</svg><p>{caption}</p></div>")


def _cell(key: str, v: Any) -> Any:
    if key == "clipped" and _num(v) is not None:
        return f"{float(v) * 100:.3g}%"
    if key == "range" and isinstance(v, list):
        return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
    return v


QUANTIZE_COLUMNS = ("bits", "shift", "w_shift", "requant_shift", "range", "clipped", "sqnr_db", "sensitivity_db")


def _columns(layers: list[dict]) -> list[str]:
    """quantize's columns in their order, then any other detail the layers have (inspect's), in theirs."""
    seen = dict.fromkeys(k for c in layers for k, v in c["details"].items() if not isinstance(v, dict))
    return [k for k in QUANTIZE_COLUMNS if k in seen] + [k for k in seen if k not in QUANTIZE_COLUMNS]


def _table(layers: list[dict], skipped: list[dict]) -> str:
    cols = _columns(layers)
    rows = []
    for c in layers:
        d = c["details"]
        cells = "".join(f'<td class="n">{_esc(_cell(k, d.get(k, "")))}</td>' for k in cols)
        rows.append(f"<tr><td>{_esc(c['name'])}</td><td>{_esc(c['op'])}</td>{cells}</tr>")
    for c in skipped:
        rows.append(f"<tr><td>{_esc(c['name'])}</td><td>{_esc(c['op'])}</td>"
                    f'<td colspan="{len(cols)}">float: {_esc(c.get("reason", ""))}</td></tr>')
    head = "".join(f"<th>{k}</th>" for k in ("layer", "op", *cols))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render(report: dict, title: str = "onnxsq quantize") -> str:
    """The page for a quantize report (``Report.to_dict()``)."""
    summary = report.get("summary", {})
    layers = _layers(report)
    skipped = [c for c in report.get("candidates", []) if c.get("action") == "skipped"]
    sqnr = [(c["name"], v) for c in layers if (v := _num(c["details"].get("sqnr_db"))) is not None]
    sens = [(c["name"], v) for c in layers if (v := _num(c["details"].get("sensitivity_db"))) is not None]
    worst = min(sqnr, key=lambda kv: kv[1]) if sqnr else None
    steps = "".join(f"<li>{_esc(text)}: {_esc(summary[k])}</li>" for k, text in STEP_KEYS if k in summary)
    facts = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in summary.items()
                    if not isinstance(v, (list, dict)))
    hists = "".join(_histogram(c) for c in report.get("candidates", []) if c.get("action") == "quantized")
    warnings = "".join(f'<li class="bad">{_esc(w)}</li>' for w in report.get("warnings", []))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{CSS}</style>"
        f"</head><body><h1>{_esc(title)}</h1>",
        f"<p>Output SQNR {_esc(summary.get('output_sqnr_db', 'not measured'))} dB"
        + (f"; lowest layer {_esc(worst[0])} at {worst[1]:g} dB" if worst else "") + "</p>",
        f"<ul>{warnings}</ul>" if warnings else "",
        "<h2>SQNR through the network</h2>",
        _line_chart(sqnr, "each quantized tensor against float") or "<p>no report samples: not measured</p>",
        "<h2>Sensitivity</h2>",
        _bars(sens, "output SQNR with that layer alone quantized (lower: more sensitive)")
        or "<p>not measured (quantize --sensitivity)</p>",
        f"<h2>What each step changed</h2><ul>{steps or '<li>nothing folded, equalized or corrected</li>'}</ul>",
        f"<h2>Layers</h2>{_table(layers, skipped)}",
        "<h2>Calibration histograms</h2>"
        + (hists or "<p>none: the estimator kept no histograms (--method minmax or ema)</p>"),
        f"<h2>Summary</h2><table>{facts}</table></body></html>",
    ]
    return "\n".join(parts)


def write_html(report: dict, path: str | os.PathLike, title: str = "onnxsq quantize") -> Path:
    """Write :func:`render`'s page to ``path`` atomically."""
    page = render(report, title)
    return write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"), "the HTML report")
