"""Pass reports: every candidate a pass looked at, what it did, or why it did not.

Reports are plain data (dataclasses → JSON). The library never renders them; the CLI does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidOptionError


@dataclass
class Candidate:
    """One thing a pass considered: a node, a weight, a tensor."""

    name: str
    op: str
    action: str  # what happened: "folded", "thresholded", "quantized", ... or "skipped"
    reason: str = ""  # why it was left alone, or a note on what was done
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.action != "skipped"


@dataclass
class Report:
    """What one pass (or command) did. ``pass_name`` is the kebab-case name used everywhere."""

    pass_name: str
    candidates: list[Candidate] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, op: str, action: str, reason: str = "", **details: Any) -> Candidate:
        cand = Candidate(name, op, action, reason, details)
        self.candidates.append(cand)
        return cand

    def skipped(self) -> list[Candidate]:
        return [c for c in self.candidates if not c.changed]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON, atomically."""
        return write_json(self.to_dict(), path)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any], what: str = "the report") -> Path:
    """``write(tmp)`` beside ``path``, then renamed onto it: readers never see half a file; a path that
    cannot be written (missing folder, a folder in the way, permissions) is one line naming ``what``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.is_file():
            tmp.unlink()
        raise InvalidOptionError(f"{path}: cannot write {what} ({exc.strerror or exc})") from None
    return path


def write_json(data: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays to Python; non-finite floats to strings (JSON has no inf/nan)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
