"""An order-dependent reduction whose result does not depend on how the sequence was split.

Calibration statistics that depend on the order of the batches (the original's moving average of the
per-batch min/max) or on float rounding order (per-channel sums) cannot simply be accumulated left to
right if shards computed apart must merge to *exactly* the one-pass value: ``(a + b) + c`` and
``a + (b + c)`` differ in the last bit. :class:`DyadicFold` fixes the order of every operation by the
*global* position of each element instead:

- element ``i`` is a leaf ``[i, i + 1)``;
- two blocks are combined only when they are siblings in the binary tree over positions: both of size
  ``s``, the left one starting at a multiple of ``2 s`` and the right one right after it;
- the result is the left fold (``combine(combine(b0, b1), b2) ...``) of the blocks that are left, in
  position order.

Every tree node's value is a function of its leaves alone, computed by the same operations whichever
process computed it, and after all possible sibling combinations the blocks covering ``[0, n)`` are
always the same: the maximal aligned blocks, one per set bit of ``n``. So a fold over ``[0, n)`` in one
pass and the merge of folds over ``[0, k)`` and ``[k, n)`` (any ``k``) give bit-identical results.
Memory: at most two blocks per tree level, ``O(log n)``.

Several elements at the same position (a unit of the calibration set that gave several batches) are
folded left to right into that position's leaf before it joins the tree; the leaf is kept *open*
until an element at another position arrives or the fold is read.

Folds whose positions overlap (shards that each counted from 0) cannot be merged exactly: the later one
is then moved behind the earlier one and its blocks are folded in as they are (the result is the
in-order reduction up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Combine = Callable[[Any, Any], Any]


@dataclass
class DyadicFold:
    """Blocks ``[start, start + size)`` with their reduced values; ``combine(left, right)`` must not
    modify its arguments."""

    combine: Combine
    blocks: list[list[Any]] = field(default_factory=list)  # [start, size, value], by start
    open: list[Any] | None = None  # [position, value] of the leaf still receiving elements

    def push(self, position: int, value: Any) -> None:
        """Add one element at ``position`` (positions never decrease)."""
        if self.open is not None and self.open[0] == position:
            self.open[1] = self.combine(self.open[1], value)
            return
        end = self.end()
        if position < end:
            raise ValueError(f"position {position} comes before the end {end} of this fold")
        self._close()
        self.open = [position, value]

    def end(self) -> int:
        """One past the last position held (0 when empty)."""
        if self.open is not None:
            return self.open[0] + 1
        return self.blocks[-1][0] + self.blocks[-1][1] if self.blocks else 0

    def start(self) -> int | None:
        if self.blocks:
            return self.blocks[0][0]
        return None if self.open is None else self.open[0]

    def _close(self) -> None:
        if self.open is not None:
            self.blocks.append([self.open[0], 1, self.open[1]])
            self.open = None
            self._join()

    def _join(self) -> None:
        """Combine sibling blocks wherever they stand next to each other (until none are left)."""
        changed = True
        while changed:
            changed = False
            for i in range(len(self.blocks) - 1):
                (s0, n0, v0), (s1, n1, v1) = self.blocks[i], self.blocks[i + 1]
                if n0 == n1 and s0 + n0 == s1 and s0 % (2 * n0) == 0:
                    self.blocks[i: i + 2] = [[s0, 2 * n0, self.combine(v0, v1)]]
                    changed = True
                    break

    def merged(self, later: DyadicFold) -> DyadicFold:
        """A new fold holding ``self``'s elements followed by ``later``'s."""
        a, b = self.copy(), later.copy()
        a._close()
        b._close()
        if not b.blocks:
            return a
        if a.blocks and b.blocks[0][0] < a.end():  # overlapping positions: fold ``later`` in as it is
            value = b.value()
            a.blocks.append([a.end(), b.end() - b.blocks[0][0], value])
            return a
        a.blocks.extend(b.blocks)
        a._join()
        return a

    def value(self) -> Any:
        """The reduction of every element (None when empty)."""
        blocks = [b[2] for b in self.blocks] + ([self.open[1]] if self.open is not None else [])
        if not blocks:
            return None
        out = blocks[0]
        for v in blocks[1:]:
            out = self.combine(out, v)
        return out

    def copy(self) -> DyadicFold:
        return DyadicFold(self.combine, [list(b) for b in self.blocks],
                          None if self.open is None else list(self.open))

    def to_list(self, encode: Callable[[Any], Any] = lambda v: v) -> list[list[Any]]:
        """The blocks (the open leaf closed) as ``[start, size, encode(value)]`` lists."""
        c = self.copy()
        c._close()
        return [[s, n, encode(v)] for s, n, v in c.blocks]

    @classmethod
    def from_list(cls, combine: Combine, blocks: list[list[Any]],
                  decode: Callable[[Any], Any] = lambda v: v) -> DyadicFold:
        out = cls(combine, [[int(s), int(n), decode(v)] for s, n, v in blocks])
        out._join()
        return out
