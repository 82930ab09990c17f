"""Per-channel running means of a tensor (bias correction's input statistics), mergeable bit for bit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dyadic import DyadicFold


def _add_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


@dataclass
class ChannelMean:
    """Running mean of a tensor per channel (``axis``), for bias correction: float64 sums and a count.

    The per-batch sums are added in the order :class:`~onnxsq.calibration.dyadic.DyadicFold` fixes by
    each batch's position, so shards merge to the bit-identical one-pass sums (the count is an
    integer). ``rank`` is the tensor's rank (the reduction axes are every other axis).
    """

    axis: int
    rank: int
    sums: DyadicFold = field(default_factory=lambda: DyadicFold(_add_sums))  # per-channel sums
    count: int = 0  # values per channel summed
    channels: int | None = None

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.rank) if i != self.axis)

    @property
    def total(self) -> np.ndarray | None:
        """The per-channel sums (None before any batch)."""
        return self.sums.value()

    def update(self, x: np.ndarray, position: int | None = None) -> None:
        """Add one batch (the whole tensor)."""
        x = np.asarray(x)
        if x.ndim != self.rank:
            raise ValueError(f"expected rank {self.rank}, got shape {list(x.shape)}")
        if x.size:
            self.update_sum(x.sum(axis=self.reduce_axes, dtype=np.float64), x.size // x.shape[self.axis], position)

    def update_sum(self, total: np.ndarray, count: int, position: int | None = None) -> None:
        """Add one batch given by its per-channel sums over ``count`` values per channel."""
        total = np.array(total, np.float64).reshape(-1)
        if not np.all(np.isfinite(total)):
            raise ValueError("tensor holds inf or nan")
        if self.channels is not None and total.size != self.channels:
            raise ValueError(f"{total.size} channels, earlier batches had {self.channels}")
        self.channels = total.size
        self.sums.push(self.sums.end() if position is None else position, total)
        self.count += int(count)

    def scaled(self, factor: float) -> ChannelMean:
        """The means of ``factor * x`` (one block: merged with no other run after this)."""
        out = ChannelMean(self.axis, self.rank)
        if self.total is not None:
            out.update_sum(self.total * factor, self.count)
        return out

    def merge(self, other: ChannelMean) -> ChannelMean:
        """One pass over ``self``'s batches then ``other``'s."""
        if (self.axis, self.rank) != (other.axis, other.rank):
            raise ValueError("cannot merge means over different axes")
        if None not in (self.channels, other.channels) and self.channels != other.channels:
            raise ValueError(f"cannot merge means over {self.channels} and {other.channels} channels")
        return ChannelMean(self.axis, self.rank, self.sums.merged(other.sums), self.count + other.count,
                           self.channels if self.channels is not None else other.channels)

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "rank": self.rank, "count": self.count, "channels": self.channels,
                "sums": self.sums.to_list(lambda v: v.tolist())}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelMean:
        sums = DyadicFold.from_list(_add_sums, d["sums"], lambda v: np.asarray(v, np.float64))
        channels = None if d["channels"] is None else int(d["channels"])
        return cls(int(d["axis"]), int(d["rank"]), sums, int(d["count"]), channels)

    @property
    def mean(self) -> np.ndarray | None:
        total = self.total
        return None if total is None or self.count == 0 else total / self.count
