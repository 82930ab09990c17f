"""Calibration in units: the batches of a calibration set, and which of them a shard ``I/N`` reads.

A source's *items* (its files, the rows of a single ``.npz``, the feeds of a Python list) are grouped
into *units* of ``B`` items, ``B`` the calibration batch (or the model's static batch size). A unit is
batched on its own (with one-sample items: exactly one batch) and every batch carries its unit's
index as its *position*, which orders the order-dependent statistics
(:mod:`onnxsq.calibration.dyadic`). Shard ``I`` of ``N`` (``I`` from 0) reads the contiguous units
``floor(I U / N) .. floor((I + 1) U / N)`` of the ``U`` units, so it forms the very batches one pass
forms, at the same positions, and the shards' statistics merge to the one-pass statistics bit for bit.
``count`` caps the samples read (in shards: the items, which is the same for one-sample items).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from ..errors import InvalidOptionError
from .sources import CalibrationSource, Feed, batches


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (``0 <= I < N``) as ``(I, N)``."""
    head, sep, tail = str(text).partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise InvalidOptionError(f"--shard {text!r}: expected I/N with 0 <= I < N (e.g. 0/4 ... 3/4)")
    return index, count


def unit_items(source: CalibrationSource, batch_size: int) -> int:
    """Items per unit: the model's static batch size, else ``batch_size``."""
    static = {i.batch_static for i in source.inputs}
    fixed = next(iter(static)) if len(static) == 1 and None not in static else None
    return fixed or max(1, batch_size)


def shard_items(source: CalibrationSource, batch_size: int, shard: tuple[int, int],
                count: int | None = None) -> tuple[int, int, int]:
    """``(first item, end item, units in the whole set)`` of ``shard``."""
    size = source.size()
    if size is None:
        raise InvalidOptionError(f"{source.description}: its size is unknown without reading it, so it cannot be "
                                 "split into shards (give a folder or a .npz)")
    size = min(size, count) if count is not None else size
    unit = unit_items(source, batch_size)
    units = math.ceil(size / unit)
    index, n = shard
    lo, hi = index * units // n, (index + 1) * units // n
    return lo * unit, min(hi * unit, size), units


def unit_batches(source: CalibrationSource, *, batch_size: int = 1, count: int | None = None,
                 items: tuple[int, int | None] = (0, None)) -> Iterator[tuple[Feed, int, int]]:
    """``(feed, samples, position)`` per batch of the items ``items`` (the first a multiple of the unit),
    at most ``count`` samples."""
    unit = unit_items(source, batch_size)
    first, end = items
    if first % unit:
        raise ValueError(f"item {first} does not start a unit of {unit}")
    stream = source.items(first, end)
    taken = 0
    for position in itertools.count(first // unit):
        group = list(itertools.islice(stream, unit))
        if not group:
            return
        left = None if count is None else count - taken
        for feed, n in batches(group, source.inputs, batch_size=unit, count=left):
            taken += n
            yield feed, n, position
        if count is not None and taken >= count:
            return
