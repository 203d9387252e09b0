"""Slot-indexed state: every per-turbine array of the runtime's state is indexed by the turbine's fleet slot (its
order of arrival), and may be shorter than the fleet (slots that never reached that part: alert states of turbines
never scored). Removing turbines renumbers the slots; `kept_rows` is that renumbering for one part's arrays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["kept_rows"]


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
