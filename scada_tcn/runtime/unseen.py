"""Channels that no admitted sample has carried since the daemon started: said once, loudly.

A channel whose payload key in `mapping.columns` is misspelt never gets a value. Without `mapping.ignored_keys`
patterns the gateway's real key is refused in every message (`unknown_channel`), which shows at once; a pattern
such as `Gearbox/*` drops the real key silently instead, and the model scores that channel as missing for ever. A
sensor the farm does not send looks the same. `UnseenChannels` watches the samples the daemon admits until every
channel has had a value (a failed read counts: its key was sent); once the samples have fallen in `WATCH_STEPS`
distinct model steps with a channel still unseen, it names the channels to report, once. A channel seen after
that report is named too, so the log says when it came.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scada_tcn.runtime.telemetry import Sample

__all__ = ["WATCH_STEPS", "UnseenChannels"]

WATCH_STEPS = 6  # model steps of data (an hour at 10 minutes) before a channel without a value is reported


class UnseenChannels:
    """Which of `n_channels` channels no sample has carried a value of; `step_ns` is the model's step."""

    def __init__(self, n_channels: int, step_ns: int) -> None:
        self.unseen = np.ones(n_channels, dtype=bool)
        self.step_ns = step_ns
        self.steps: set[int] = set()  # the model steps the watched samples fall in, until WATCH_STEPS of them
        self.reported = False

    def observe(self, samples: Sequence[Sample]) -> tuple[list[int], list[int]]:
        """Admitted samples -> (channels to report as without a value now, once; channels that got their first
        value now, after that report). The watch lasts until the samples have fallen in WATCH_STEPS distinct model
        steps (of any turbines, in any order: an old sample forwarded late does not stretch it). Costs nothing
        once every channel has had a value, and a batch's stack and test until then."""
        if not samples or not self.unseen.any():
            return [], []
        values = np.stack([s.values for s in samples])
        seen = ~np.isnan(values).all(axis=0)
        for s in samples:
            if s.failed:
                seen[list(s.failed)] = True
        came = self.unseen & seen
        self.unseen &= ~seen
        late = np.flatnonzero(came).tolist() if self.reported else []
        if self.reported or not self.unseen.any():
            return [], late
        self.steps.update(s.ts_ns // self.step_ns for s in samples)
        if len(self.steps) < WATCH_STEPS:
            return [], late
        self.reported = True
        self.steps.clear()
        return np.flatnonzero(self.unseen).tolist(), late
