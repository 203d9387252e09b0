"""Slot-indexed state: every per-turbine array of the runtime's state is indexed by the turbine's fleet slot (its
order of arrival), and may be shorter than the fleet (slots that never reached that part: alert states of turbines
never scored). Removing turbines renumbers the slots; `kept_rows` is that renumbering for one part's arrays.
`Chain` orders the rows of a batch in which a slot may have several rows (its consecutive steps, in row order):
a replay's chunk goes through the incremental features in one call instead of a call per time step, and `rounds`
splits such a batch into groups of distinct slots (binning, the rings, the alert steps)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Chain", "kept_rows", "rounds"]


def kept_rows(arrays: Mapping[str, Any], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of the old slots `keep` (increasing), in that order, of each array (n_slots, ...): new slot i is old
    slot keep[i]. An array shorter than the fleet keeps those of its rows that `keep` names (a prefix of the new
    slots, since `keep` increases). ValueError for an array without a slot axis."""
    keep = np.asarray(keep, dtype=np.int64)
    if keep.ndim != 1 or (keep.size > 1 and (np.diff(keep) <= 0).any()) or (keep.size and keep[0] < 0):
        raise ValueError("kept_rows: keep must be increasing slot numbers >= 0")
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.ndim < 1:
            raise ValueError(f"kept_rows: {name!r} has no slot axis (shape {a.shape})")
        out[name] = a[keep[keep < a.shape[0]]]
    return out


class Chain:
    """Rows (B,) of `slots`, each slot's rows its consecutive steps in row order (distinct slots: one step each).

    `order` sorts the rows by slot, keeping each slot's rows in order; `first` / `last` (B,) mark, in that order,
    each slot's first and last row; `slots` (S,) are the distinct slots (increasing), `count` (S,) their rows.
    `rounds()` groups the rows by their rank within their slot. The parts past `first` are computed when read (the
    daemon's loop asks `rounds` of a handful of distinct slots)."""

    def __init__(self, slots: np.ndarray) -> None:
        s = np.asarray(slots, dtype=np.int64)
        self.order = np.argsort(s, kind="stable")
        self._sorted = s[self.order]
        self.first = np.empty(s.size, dtype=bool)
        if s.size:
            self.first[0] = True
            np.not_equal(self._sorted[1:], self._sorted[:-1], out=self.first[1:])

    @functools.cached_property
    def last(self) -> np.ndarray:
        return np.append(self.first[1:], True) if self.first.size else self.first

    @functools.cached_property
    def slots(self) -> np.ndarray:
        return self._sorted[self.first]

    @functools.cached_property
    def count(self) -> np.ndarray:
        return np.diff(np.flatnonzero(self.first), append=self.first.size)

    def rounds(self) -> list[np.ndarray]:
        """Row indices grouped by their rank within their slot: round r = each slot's r-th row (distinct slots)."""
        n = self.first.size
        if n < 2 or self.first.all():  # distinct slots (the daemon's loop iteration): one round
            return [np.arange(n)]
        rank = np.empty(n, dtype=np.int64)
        rank[self.order] = np.arange(n) - np.repeat(np.flatnonzero(self.first), self.count)
        by_rank = np.argsort(rank, kind="stable")  # one sort, not a scan of all rows per round
        return np.split(by_rank, np.cumsum(np.bincount(rank))[:-1])

    def previous(self, rows: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Each row's predecessor (in row order): its slot's previous row here, else `state[slot]` (its state)."""
        srt = rows[self.order]
        prev = np.empty_like(srt)
        prev[1:] = srt[:-1]
        prev[self.first] = state[self.slots]
        out = np.empty_like(prev)
        out[self.order] = prev
        return out

    def newest(self, rows: np.ndarray) -> np.ndarray:
        """Each distinct slot's last row (S, ...), in `slots` order: what its state becomes."""
        return rows[self.order[self.last]]


def rounds(slots: np.ndarray) -> list[np.ndarray]:
    """Sample indices (arrival order) grouped by their rank within their slot: round r = each slot's r-th."""
    return Chain(slots).rounds()
