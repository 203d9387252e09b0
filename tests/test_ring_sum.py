"""`runtime.ring_sum.RingSum` against the tree it keeps: `pairwise_sum` over the whole ring, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scada_tcn.runtime.ring_sum import RingSum
from scada_tcn.trainer.model.network import pairwise_sum


def _tree(ring: np.ndarray) -> np.ndarray:
    return pairwise_sum(torch.from_numpy(ring.copy()), 1).numpy()


@pytest.mark.parametrize("n", [1, 2, 3, 8, 143])
def test_column_updates_keep_the_bits_of_summing_the_whole_ring(n):
    """Columns written in ring order, as the stream does, for contiguous blocks of slots and for scattered ones,
    with values that round differently in any other order (and negative zeros): after every write each slot's
    sum equals `pairwise_sum` of its ring, and the ring itself holds what was written."""
    rng = np.random.default_rng(n)
    slots, width = 9, 4
    pool = RingSum(n, width)
    pool.grow(5)
    pool.grow(slots)  # grown twice: the new slots hold zeros, like the first ones
    want = np.zeros((slots, n, width), np.float32)
    for t in range(3 * n + 2):
        rows: slice | np.ndarray = slice(2, 7) if t % 2 else np.array([0, 3, 8])
        b = want[rows].shape[0]
        x = (rng.standard_normal((b, width)) * 10.0 ** rng.integers(-6, 6, width)).astype(np.float32)
        x[0, 0] = -0.0
        pool.put(rows, t % n, x)
        want[rows, t % n] = x
        np.testing.assert_array_equal(pool.ring, want)
        np.testing.assert_array_equal(pool.total(np.arange(slots)), _tree(want))
        np.testing.assert_array_equal(pool.total(slice(0, slots)), _tree(want))


@pytest.mark.parametrize("n", [1, 6, 143])
def test_a_ring_set_whole_gives_the_tree_of_one_written_a_column_at_a_time(n):
    """`set_rows` (a state loaded, a rebuilt turbine) leaves every node of the tree as the writes would."""
    rng = np.random.default_rng(0)
    written, loaded = RingSum(n, 3), RingSum(n, 3)
    written.grow(4)
    loaded.grow(4)
    for t in range(2 * n + 1):
        written.put(slice(0, 4), t % n, rng.standard_normal((4, 3)).astype(np.float32))
    loaded.set_rows(np.array([1, 3]), written.ring[[1, 3]])
    loaded.set_rows(slice(0, 1), written.ring[:1])
    loaded.set_rows(np.array([2]), written.ring[[2]])
    for a, b in zip((written.ring, *written.levels), (loaded.ring, *loaded.levels)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.total(np.arange(4)), _tree(written.ring))


def test_refuses_an_empty_ring():
    with pytest.raises(ValueError, match="n and width must be >= 1"):
        RingSum(0, 3)
