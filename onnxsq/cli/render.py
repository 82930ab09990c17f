"""Rendering for the CLI: logging setup, report tables (rich), progress bars.

The library never prints; everything a user sees on the terminal is made here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ..report import Report

_CONSOLES: dict[str, Console] = {}


def console() -> Console:
    if "out" not in _CONSOLES:
        # Piped output (CI logs, files) has no terminal width; rich would cut tables to 80 columns.
        import sys

        width = None if sys.stdout.isatty() else 200
        _CONSOLES["out"] = Console(soft_wrap=False, width=width)
    return _CONSOLES["out"]


def err_console() -> Console:
    if "err" not in _CONSOLES:
        _CONSOLES["err"] = Console(stderr=True, soft_wrap=True)
    return _CONSOLES["err"]


def reset_consoles() -> None:
    """Forget cached consoles (tests swap sys.stdout/stderr between runs)."""
    _CONSOLES.clear()


def setup_logging(verbose: int, quiet: bool) -> None:
    reset_consoles()
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    root = logging.getLogger("onnxsq")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = RichHandler(console=err_console(), show_time=False, show_path=verbose >= 2, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(list(value))
    return "" if value is None else str(value)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
    return t


def render_report(report: Report, *, detail_keys: Sequence[str] | None = None) -> None:
    """A table of the report's candidates, then its summary and warnings."""
    keys = list(detail_keys) if detail_keys is not None else _detail_keys(report)
    rows = [[c.name, c.op, c.action, *[c.details.get(k) for k in keys], c.reason] for c in report.candidates]
    con = console()
    if rows:
        con.print(table(report.pass_name, ["name", "op", "action", *keys, "reason"], rows))
    if report.summary:
        con.print(table(f"{report.pass_name}: summary", ["", "value"], report.summary.items()))
    for w in report.warnings:
        logging.getLogger("onnxsq.cli").warning("%s", w)


def _detail_keys(report: Report) -> list[str]:
    seen: dict[str, None] = {}
    for c in report.candidates:
        for k, v in c.details.items():
            if isinstance(v, (int, float, str, bool, list, tuple)) or v is None:
                seen.setdefault(k, None)
    return list(seen)


def finish(report: Report, report_path: Path | None, *, quiet: bool, detail_keys: Sequence[str] | None = None) -> None:
    """Write the JSON report if asked, and render it unless quiet."""
    if report_path is not None:
        report.write(report_path)
    if not quiet:
        render_report(report, detail_keys=detail_keys)
