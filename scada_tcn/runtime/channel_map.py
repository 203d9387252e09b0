"""Columns kept per channel, moved from one bundle's channel list to another's by channel name: the rule a model
change applies to the journal's frames after a crash (`journal.in_channels`) and to the open bins it carries
(`open_bins`). Values move bit for bit (a failed read, a NaN with a payload, stays one); a channel the old list
lacks gets the caller's fill (missing, nothing held); a channel the new list lacks is left."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ChannelMap", "channel_map"]


class ChannelMap(NamedTuple):
    dst: np.ndarray  # the new list's positions of the channels both lists name
    src: np.ndarray  # ... and their positions in the old list
    n: int  # the new list's length

    def moved(self, x: Any, fill: Any, dtype: Any) -> np.ndarray:
        """`x` (last axis: the old list's channels) as `dtype`, its last axis the new list's, `fill` elsewhere."""
        x = np.asarray(x, dtype=dtype)
        out = np.full((*x.shape[:-1], self.n), fill, dtype=dtype)
        out[..., self.dst] = x[..., self.src]
        return out


def channel_map(had: Sequence[str], channels: Sequence[str]) -> ChannelMap | None:
    """How columns in the channels `had` move to `channels`; None when `had` names a channel twice or the two lists
    share no channel (nothing can be taken)."""
    at = {c: i for i, c in enumerate(had)}
    dst = [j for j, c in enumerate(channels) if c in at]
    if len(at) != len(had) or not dst:
        return None
    src = [at[channels[j]] for j in dst]
    return ChannelMap(np.array(dst, dtype=np.int64), np.array(src, dtype=np.int64), len(channels))
