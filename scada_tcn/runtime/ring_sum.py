"""The fault head's ring of clean hidden states and its sum, kept up to date one column at a time.

The step graph pools the last L steps of the clean hidden state as (sum of the ring of the L - 1 before t + the new
one) / L, the ring summed by the fixed tree of `trainer.model.network.pairwise_sum`: the n = L - 1 positions
(column tau mod n for step tau) zero-padded to size = the next power of two, then the halves added, x[p] +
x[p + size / 2], until one is left. Recomputing that tree at every step reads the whole ring (n x hidden floats per
turbine) and, in onnxruntime, copies it several times: 38 % of the step graph's time. Here every node of the tree
is kept (`levels`, size / 2, size / 4, ..., 1 nodes per slot): writing a column changes one node per level, so
`put` does log2(size) vector additions, each node the same two operands in the same order as the full tree
(and x + 0.0 where the other one is padding), so the sum has the bits the full tree gives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RingSum"]

Rows = slice | np.ndarray  # a block of consecutive slots, or slot indices


class RingSum:
    """Per slot, a ring of `n` vectors of `width` float32 and its pairwise-tree sum (see the module docstring)."""

    def __init__(self, n: int, width: int) -> None:
        if n < 1 or width < 1:
            raise ValueError(f"RingSum: n and width must be >= 1, got {n}, {width}")
        self.n, self.width = n, width
        size = 1 << (n - 1).bit_length()
        self.ring = np.zeros((0, n, width), np.float32)
        self.levels = [np.zeros((0, size >> k, width), np.float32) for k in range(1, size.bit_length())]

    @property
    def slots(self) -> int:
        return self.ring.shape[0]

    def grow(self, slots: int) -> None:
        """Room for `slots` slots; new ones hold zeros (their sum is zero)."""
        more = slots - self.slots
        if more > 0:
            self.ring, *self.levels = (np.concatenate([a, np.zeros((more, *a.shape[1:]), np.float32)])
                                       for a in (self.ring, *self.levels))  # fmt: skip

    def total(self, rows: Rows) -> np.ndarray:
        """The sums of `rows` (B, width)."""
        return (self.levels[-1] if self.levels else self.ring)[rows, 0]

    def put(self, rows: Rows, pos: int, x: np.ndarray) -> None:
        """Write column `pos` (0 <= pos < n) of `rows` with x (B, width) and update their sums."""
        self.ring[rows, pos] = x
        lower, p = self.ring, pos
        for level in self.levels:
            half = level.shape[1]
            p %= half
            pair = lower[rows, p + half] if p + half < lower.shape[1] else np.float32(0.0)
            level[rows, p] = lower[rows, p] + pair
            lower = level

    def set_rows(self, rows: Rows, ring: np.ndarray) -> None:
        """Replace the whole ring of `rows` (B, n, width) and recompute their trees."""
        self.ring[rows] = ring
        lower = self.ring[rows]
        size = 2 * self.levels[0].shape[1] if self.levels else 1
        if size != self.n:
            lower = np.concatenate([lower, np.zeros((lower.shape[0], size - self.n, self.width), np.float32)], 1)
        for level in self.levels:
            half = level.shape[1]
            lower = lower[:, :half] + lower[:, half:]
            level[rows] = lower
