"""Calibration statistics as a file (``.stats``): written by ``onnxsq calibrate``, merged by ``quantize --stats``.

A :class:`CalibrationStats` holds what one calibration pass over some units of a calibration set
(:mod:`onnxsq.calibration.units`) gathered: every observed tensor's :class:`TensorStats`, the
per-channel means bias correction needs, the samples read, which units were covered, and a fingerprint
of the float model that was run (the model after folding and equalization: statistics only fit it).

Merging (:func:`merge_stats`) puts the parts in unit order and merges each tensor's statistics with
:meth:`TensorStats.merge` / :meth:`ChannelMean.merge`: counts, min/max and histograms are order-free
(integer sums, min and max, histograms on power-of-two ranges whose bin edges nest), and the
order-dependent moving averages and float64 sums are reduced in an order fixed by unit positions
(:mod:`onnxsq.calibration.dyadic`), so shards merged give the one-pass statistics bit for bit.

The file is gzip-compressed JSON ``{"format": "onnxsq-calibration-stats", "version": 2, ...}``
(floats written by Python's ``repr``, which reads back exactly); anything else is refused in one line.
(Version 2: large tensors' histograms hold a strided subsample, :mod:`onnxsq.calibration.sampling`;
version 1 files binned every value and do not merge with them.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import DataError, InvalidOptionError
from .stats import ChannelMean, TensorStats

FORMAT = "onnxsq-calibration-stats"
VERSION = 2
SUFFIX = ".stats"


@dataclass
class CalibrationStats:
    """The statistics of units ``covered`` (``[lo, hi)`` ranges) of a set of ``units`` units."""

    model: str  # fingerprint of the float model calibrated (see fingerprint())
    histogram: bool
    tensors: dict[str, TensorStats]
    means: dict[str, ChannelMean]
    samples: int
    units: int
    covered: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)

    def missing(self) -> list[tuple[int, int]]:
        """The unit ranges of the whole set not covered."""
        out, at = [], 0
        for lo, hi in sorted(self.covered):
            if lo > at:
                out.append((at, lo))
            at = max(at, hi)
        return out + ([(at, self.units)] if at < self.units else [])

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "histogram": self.histogram,
                "samples": self.samples, "units": self.units, "covered": [list(c) for c in self.covered],
                "warnings": self.warnings, "tensors": {n: s.to_dict() for n, s in self.tensors.items()},
                "means": {n: m.to_dict() for n, m in self.means.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibrationStats:
        return cls(str(d["model"]), bool(d["histogram"]),
                   {str(n): TensorStats.from_dict(s) for n, s in d["tensors"].items()},
                   {str(n): ChannelMean.from_dict(m) for n, m in d["means"].items()},
                   int(d["samples"]), int(d["units"]), [(int(a), int(b)) for a, b in d["covered"]],
                   [str(w) for w in d.get("warnings", [])])


def fingerprint(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> str:
    """sha256 of a skeleton model and its fed weights (names, dtypes, shapes, bytes), hex."""
    h = hashlib.sha256(model.SerializeToString())
    for name in sorted(weights):
        w = np.ascontiguousarray(weights[name])
        h.update(f"{name}|{w.dtype.str}|{w.shape}".encode())
        h.update(memoryview(w).cast("B"))
    return h.hexdigest()


def write_stats(stats: CalibrationStats, path: str | os.PathLike) -> Path:
    """Write ``stats`` to ``path`` atomically (aside, then renamed)."""
    from ..report import write_atomic

    def write(tmp: Path) -> None:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
            json.dump(stats.to_dict(), f, separators=(",", ":"))

    return write_atomic(path, write, "the statistics")


def read_stats(path: str | os.PathLike) -> CalibrationStats:
    """Read a ``.stats`` file; anything that is not one of ours is a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such statistics file")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError):
        raise DataError(f"{path}: not an onnxsq statistics file (write one with onnxsq calibrate)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not an onnxsq statistics file (write one with onnxsq calibrate)")
    if data.get("version") != VERSION:
        raise DataError(f"{path}: statistics format version {data.get('version')!r}, this onnxsq reads {VERSION}")
    try:
        return CalibrationStats.from_dict(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: a damaged statistics file ({type(exc).__name__}: {exc})") from None


def merge_stats(parts: Iterable[CalibrationStats | str | os.PathLike]) -> CalibrationStats:
    """One :class:`CalibrationStats` from shards (objects or files), as one pass over all their units."""
    named = [(p, p) if isinstance(p, CalibrationStats) else (str(p), read_stats(p)) for p in parts]
    if not named:
        raise InvalidOptionError("no statistics given")
    named.sort(key=lambda ns: min((c[0] for c in ns[1].covered), default=0))
    first_name, out = named[0][0], named[0][1]
    for name, part in named[1:]:
        _check_fits(out, part, first_name, name)
        out = CalibrationStats(out.model, out.histogram,
                               {n: s.merge(part.tensors[n]) for n, s in out.tensors.items()},
                               {n: m.merge(part.means[n]) for n, m in out.means.items()},
                               out.samples + part.samples, out.units, out.covered + part.covered,
                               out.warnings + [w for w in part.warnings if w not in out.warnings])
    return out


def _check_fits(a: CalibrationStats, b: CalibrationStats, a_name: Any, b_name: Any) -> None:
    what = f"statistics {b_name!s} and {a_name!s}"
    if a.model != b.model:
        raise DataError(f"{what} come from different models (or --no-equalize / folding options)")
    if (a.histogram, a.units) != (b.histogram, b.units):
        raise DataError(f"{what} were calibrated differently (--method with and without a histogram, or another "
                        "--batch-size / --calib-count / calibration set)")
    if set(a.tensors) != set(b.tensors) or {n: (m.axis, m.rank) for n, m in a.means.items()} != \
            {n: (m.axis, m.rank) for n, m in b.means.items()}:
        raise DataError(f"{what} observed different tensors (other --exclude / --per-channel / bias correction)")
    for lo, hi in b.covered:
        if any(lo < h and l < hi for l, h in a.covered):  # noqa: E741 - l, h: low and high
            raise DataError(f"{what} overlap: both cover units {lo}..{hi - 1} (the same shard twice?)")
