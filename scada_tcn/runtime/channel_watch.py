"""Channels that no admitted sample carries: said when it starts, loudly, and when it ends.

A channel whose payload key in `mapping.columns` is misspelt never gets a value, and one whose tag a gateway's
update renamed stops getting values. Without `mapping.ignored_keys` patterns the gateway's real key is refused in
every message (`unknown_channel`), which shows at once; a pattern such as `Gearbox/*` drops it silently instead,
and the model scores that channel as missing for ever. A sensor the farm does not send looks the same.

`ChannelWatch` follows, over the whole fleet, the newest stamp at which each channel carried a value (a failed
read counts: its key was sent). A channel is silent when none of the samples has carried it once they have
fallen in `WATCH_STEPS` distinct model steps (at start), or when the fleet's newest stamp is `SILENT_STEPS` model
steps past its last value (later: a slow or report-by-exception channel is not silent for a quiet hour). Each
change is said once: a channel going silent, and coming back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scada_tcn.runtime.telemetry import Sample

__all__ = ["PENDING_MAX", "SILENT_STEPS", "WATCH_STEPS", "ChannelWatch"]

WATCH_STEPS = 6  # distinct model steps of data (an hour at 10 minutes) before a channel never seen is silent
SILENT_STEPS = 36  # model steps (six hours at 10 minutes) without a value before a channel seen before is silent
PENDING_MAX = 4096  # samples held for one look at most
_NEVER = np.iinfo(np.int64).min


class ChannelWatch:
    """Which of `n_channels` channels the fleet's samples no longer carry; `step_ns` is the model's step."""

    def __init__(self, n_channels: int, step_ns: int) -> None:
        self.last_ns = np.full(n_channels, _NEVER, dtype=np.int64)  # the newest stamp carrying each channel
        self.newest_ns = _NEVER  # the newest stamp of any sample
        self.silent = np.zeros(n_channels, dtype=bool)  # as last said
        self.step_ns = step_ns
        self.steps: set[int] = set()  # the model steps the samples fell in, until WATCH_STEPS of them
        self.started = False
        self.pending: list[Sample] = []  # samples not yet looked at: they are looked at once per model step
        self.step = _NEVER  # the newest model step looked at

    def observe(self, samples: Sequence[Sample], now_ns: int | None = None) -> tuple[list[int], list[int]]:
        """Admitted samples -> (channels gone silent, channels back), each change said once. The samples are
        looked at together when one of them opens a later model step than any before (or PENDING_MAX wait), so a
        loop that takes one message at a time pays the arrays' cost once per step, not per message. `now_ns` (the
        daemon's clock): stamps ahead of it (a publisher's clock up to `ingest.max_future_s` fast) count as now, so
        they neither call the other channels silent early nor hold the samples back until PENDING_MAX."""
        if not samples:
            return [], []
        self.pending.extend(samples)
        step = max(s.ts_ns for s in samples) // self.step_ns
        if now_ns is not None:
            step = min(step, now_ns // self.step_ns)
        if step <= self.step and len(self.pending) < PENDING_MAX:
            return [], []
        self.step = max(self.step, step)
        batch, self.pending = self.pending, []
        ts = np.fromiter((s.ts_ns for s in batch), dtype=np.int64, count=len(batch))
        carried = ~np.isnan(np.stack([s.values for s in batch]))
        for i, s in enumerate(batch):
            if s.failed:
                carried[i, list(s.failed)] = True
        np.maximum(self.last_ns, np.where(carried, ts[:, None], _NEVER).max(axis=0), out=self.last_ns)
        self.newest_ns = max(self.newest_ns, int(ts.max()) if now_ns is None else min(int(ts.max()), now_ns))
        if not self.started:
            self.steps.update((ts // self.step_ns).tolist())
            self.started = len(self.steps) >= WATCH_STEPS
            if self.started:
                self.steps.clear()
        never = self.last_ns == _NEVER
        quiet = ~never & (np.where(never, self.newest_ns, self.last_ns) <= self.newest_ns - SILENT_STEPS * self.step_ns)
        silent = (never & self.started) | quiet
        gone, back = silent & ~self.silent, self.silent & ~silent
        self.silent = silent
        return np.flatnonzero(gone).tolist(), np.flatnonzero(back).tolist()
