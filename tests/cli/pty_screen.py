"""Run a command under a pseudo-terminal and replay what it wrote on a minimal terminal screen.

The progress displays (rich's live bars) only draw on a terminal, and what a user sees there is the
result of cursor movements and line erasures, not the raw bytes. :class:`Screen` understands the
sequences rich writes (CR, LF, cursor up/down/column, erase line/screen, SGR and mode switches
ignored) and records, after every write, how many lines match a pattern: "one bar per phase" is a
bound on that count over the whole run.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


@dataclass
class Screen:
    """Lines of a terminal without a height limit (nothing scrolls away), a cursor, and snapshots."""

    lines: list[str] = field(default_factory=lambda: [""])
    row: int = 0
    col: int = 0
    frames: list[list[str]] = field(default_factory=list)

    def _put(self, ch: str) -> None:
        line = self.lines[self.row]
        if len(line) < self.col:
            line += " " * (self.col - len(line))
        self.lines[self.row] = line[: self.col] + ch + line[self.col + 1:]
        self.col += 1

    def _down(self, n: int = 1) -> None:
        self.row += n
        while len(self.lines) <= self.row:
            self.lines.append("")

    def _csi(self, params: str, cmd: str) -> None:
        n = int(params) if params.isdigit() else 1
        if cmd == "A":
            self.row = max(0, self.row - n)
        elif cmd == "B":
            self._down(n)
        elif cmd == "G":
            self.col = n - 1
        elif cmd == "K":
            mode = int(params) if params.isdigit() else 0
            line = self.lines[self.row]
            self.lines[self.row] = "" if mode == 2 else (line[: self.col] if mode == 0 else " " * self.col
                                                          + line[self.col:])
        elif cmd == "J" and params in ("2", "3"):
            self.lines, self.row, self.col = [""], 0, 0
        # m (colours), h/l (modes such as the hidden cursor) and the rest change no text

    def feed(self, text: str) -> None:
        text = _OSC.sub("", text)
        pos = 0
        for m in _CSI.finditer(text):
            self._text(text[pos: m.start()])
            self._csi(m.group(1), m.group(2))
            pos = m.end()
        self._text(text[pos:])
        self.frames.append([line.rstrip() for line in self.lines])

    def _text(self, text: str) -> None:
        for ch in text:
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._down()
                self.col = 0
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch >= " ":
                self._put(ch)

    def final(self) -> list[str]:
        lines = [line.rstrip() for line in self.lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def most_at_once(self, pattern: str) -> int:
        """The most lines matching ``pattern`` on the screen at any moment of the run."""
        rx = re.compile(pattern)
        return max((sum(1 for line in f if rx.search(line)) for f in self.frames), default=0)

    def ever(self, pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.search(line) for f in self.frames for line in f)


@dataclass
class PtyRun:
    code: int
    raw: str
    screen: Screen


def run_in_pty(argv: Sequence[str | os.PathLike], *, cwd: Path | None = None, timeout: float = 300,
               columns: int = 120) -> PtyRun:
    """Run ``argv`` with stdin, stdout and stderr on one pseudo-terminal; feed what it writes to a Screen."""
    import pty

    leader, follower = pty.openpty()
    try:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    except (ImportError, OSError):
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI", "TERM", "COLUMNS", "LINES")}
    env.update({"TERM": "xterm-256color", "COLUMNS": str(columns)})
    proc = subprocess.Popen([str(a) for a in argv], stdin=follower, stdout=follower, stderr=follower, cwd=cwd,
                            env=env, close_fds=True)
    os.close(follower)
    screen, chunks = Screen(), []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            text = data.decode("utf-8", "replace")
            chunks.append(text)
            screen.feed(text)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return PtyRun(code, "".join(chunks), screen)


def onnxsq_argv(*args: str | os.PathLike) -> list[str]:
    """The real command, from this interpreter's environment."""
    exe = Path(sys.executable).with_name("onnxsq")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxsq.cli.main"]
    return [*head, *(str(a) for a in args)]
