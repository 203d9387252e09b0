"""Slot-indexed state: every per-turbine array of the runtime's state is indexed by the turbine's fleet slot (its
order of arrival), and may be shorter than the fleet (slots that never reached that part: alert states of turbines
never scored). Removing turbines renumbers the slots; `kept_rows` is that renumbering for one part's arrays.
`Chain` orders the rows of a batch in which a slot may have several rows (its consecutive steps, in row order):
a replay's chunk goes through the incremental features in one call instead of a call per time step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Chain", "kept_rows"]


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
    each slot's first and last row; `slots` (S,) are the distinct slots (increasing), `count` (S,) their rows."""

    def __init__(self, slots: np.ndarray) -> None:
        s = np.asarray(slots, dtype=np.int64)
        self.order = np.argsort(s, kind="stable")
        ss = s[self.order]
        change = ss[1:] != ss[:-1]
        self.first, self.last = (np.r_[True, change], np.r_[change, True]) if s.size else (change, change)
        self.slots = ss[self.first]
        self.count = np.diff(np.r_[np.flatnonzero(self.first), s.size])

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
