"""Rendering for the CLI: logging setup, report tables (rich), progress bars.

The library never prints; everything a user sees on the terminal is made here.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
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
        # Off a terminal (CI logs, files) the default 80 columns would wrap every long warning over lines.
        import sys

        width = None if sys.stderr.isatty() else 200
        _CONSOLES["err"] = Console(stderr=True, soft_wrap=True, width=width)
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
    handler: logging.Handler
    if err_console().is_terminal:
        handler = RichHandler(console=err_console(), show_time=False, show_path=verbose >= 2, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs and CI: one plain line per record, never wrapped or padded to a width
        import sys

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: " + ("%(name)s: " if verbose >= 2 else "")
                                               + "%(message)s"))
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
    if isinstance(value, dict):  # a list of records counts in the table; the JSON report (--report) has them
        return ", ".join(f"{k}: {len(v) if isinstance(v, list) and v and isinstance(v[0], dict) else fmt(v)}"
                         for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "×".join(str(v) for v in value)  # a shape
        # each element as a table cell shows it (per_class_iou: 0.8123, not 0.8123456789012345)
        return "[" + ", ".join("–" if v is None else fmt(v) for v in value) + "]"
    return "" if value is None else str(value)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(escape(fmt(v)) for v in r))  # a list's "[...]" is text, not markup (it vanished)
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


def _live_console(quiet: bool) -> Console | None:
    """Where a progress display draws: stdout's console while stdout is a terminal (so the tables and
    lines printed meanwhile go above the bar, not through it), else stderr's while that is a terminal;
    None (no display) in logs, CI and pipes, and when quiet."""
    if quiet:
        return None
    for con in (console(), err_console()):
        if con.is_terminal:
            return con
    return None


@contextlib.contextmanager
def _logs_to(con: Console | None) -> Iterator[None]:
    """While a display is live on ``con``, log lines are printed through it too (above the bar)."""
    handlers = [h for h in logging.getLogger("onnxsq").handlers if isinstance(h, RichHandler)]
    if con is None or not handlers:
        yield
        return
    before = [h.console for h in handlers]
    for h in handlers:
        h.console = con
    try:
        yield
    finally:
        for h, c in zip(handlers, before):
            h.console = c


PhaseCallback = Callable[[int, "int | None", str], None]


@contextlib.contextmanager
def phase_progress(*, quiet: bool) -> Iterator[PhaseCallback]:
    """``progress(done, total, phase)`` for the library's per-batch callbacks: one bar per phase
    ("calibrate", "evaluate", ...), created when the phase first reports and updated in place after,
    on stderr while it is a terminal (nothing otherwise, nothing when quiet); gone when the block ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    con = _live_console(quiet)
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=con, transient=True, disable=con is None) as bar, _logs_to(con):
        tasks: dict[str, Any] = {}

        def advance(done: int, total: int | None, phase: str) -> None:
            if phase not in tasks:
                for task in bar.tasks:  # a phase that reports no more is finished
                    if task.total is not None and not task.finished:
                        bar.update(task.id, completed=task.total)
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield advance


class StageBars:
    """One bar for the stage that runs (``onnxsq pipeline``): its label, phase and progress in place."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.tasks = bar, {}

    def update(self, label: str, phase: str, done: int, total: int | None, info: str = "") -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total, phase=phase, info=info)
        self.bar.update(self.tasks[label], completed=done, total=total, phase=phase, info=info)

    def finish(self, label: str) -> None:
        if label in self.tasks:
            self.bar.remove_task(self.tasks.pop(label))


@contextlib.contextmanager
def stage_progress(*, quiet: bool) -> Iterator[StageBars]:
    """:class:`StageBars` drawn on stderr while it is a terminal (nothing otherwise, nothing when quiet)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    con = _live_console(quiet)
    with Progress(TextColumn("{task.description}"), TextColumn("{task.fields[phase]:<9}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                  console=con, transient=True, disable=con is None) as bar, _logs_to(con):
        yield StageBars(bar)
