"""Sparkplug births' values held back while their turbine's stored history comes in.

An edge node that stores and forwards (its link was down, or its primary host offline: `runtime.presence`)
publishes, when it is back, its births first, with the values read now, and then the history it stored, as data
messages whose metrics are flagged `is_historical`, oldest first. Taken in that order, a birth's values would
close the turbine's bins up to now (a sample closes its turbine's bins the grace, at most a step, before it:
`runtime.open_bins`) and every stored value after them would be late: the steps of the outage would be scored as
missing, and their data dropped.

`BirthHold` keeps a birth's samples (per turbine: a node's own, or a device's) out of the stream until the
turbine's data reaches them, and then merges them in by time:
* `hold(samples, now)` takes a birth's samples. A turbine's later birth joins what it holds (a node that
  reconnects in the middle of its history births again and goes on with the history).
* `merge(samples, historical, now)` is asked for each data message of the turbines it names: history
  (`historical`: every value is `is_historical`) releases the held samples stamped no later than its own newest,
  a current message all of them; they come back merged with the message's samples in time order (held first on
  equal stamps). History that releases nothing keeps the turbine active.
* `drop(turbines)`: a death's turbines. Their held samples are dropped, not taken: after the death nothing says
  where the turbine's history will start, and the node births again when it is back. `drop` says how many.
* `due(now)`: the held samples of turbines that sent nothing for `quiet_ns` (a steady report-by-exception node
  sends nothing after its birth; history that pauses that long is taken as done); a clock set back releases them.
Births are kept in memory only (as the decoder's aliases are): at stop (`drop` of all) and in a crash, the values
of births not yet released are lost; the node publishes them again at its next session.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from scada_tcn.runtime.telemetry import Sample

__all__ = ["BirthHold"]


class _Held(NamedTuple):
    samples: list[Sample]  # in the order held
    active_ns: int  # the wall clock when the turbine last held a birth or sent history


class BirthHold:
    """Births' samples by turbine, held while that turbine's history comes (see the module docstring)."""

    def __init__(self, quiet_ns: int) -> None:
        self.quiet_ns = int(quiet_ns)
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def turbines(self) -> list[str]:
        """The turbines whose births are held."""
        return list(self._held)

    def hold(self, samples: list[Sample], now_ns: int) -> None:
        """Hold a birth's samples (with what their turbines already hold)."""
        for s in samples:
            h = self._held.get(s.turbine)
            self._held[s.turbine] = _Held([s] if h is None else [*h.samples, s], now_ns)

    def merge(self, samples: list[Sample], historical: bool, now_ns: int) -> list[Sample]:
        """A data message's samples (in time order) with the held samples they release, in time order; `historical`:
        every value of the message is history."""
        if not self._held:
            return samples
        released: list[Sample] = []
        for t in dict.fromkeys(s.turbine for s in samples):
            h = self._held.get(t)
            if h is None:
                continue
            reach = max(s.ts_ns for s in samples if s.turbine == t) if historical else None
            kept = [] if reach is None else [s for s in h.samples if s.ts_ns > reach]
            released += [s for s in h.samples if reach is None or s.ts_ns <= reach]
            if kept:
                self._held[t] = _Held(kept, now_ns)
            else:
                del self._held[t]
        if not released:
            return samples
        return sorted([*released, *samples], key=lambda s: s.ts_ns)  # stable: held first on equal stamps

    def drop(self, turbines: Iterable[str] | None = None) -> int:
        """Drop the held samples of `turbines` (None: all); how many were dropped."""
        gone = [self._held.pop(t, None) for t in (list(self._held) if turbines is None else turbines)]
        return sum(len(h.samples) for h in gone if h is not None)

    def due(self, now_ns: int) -> list[Sample]:
        """The held samples of turbines quiet for `quiet_ns`, released (all of them when the clock was set back
        behind a turbine's last activity), in the order held."""
        quiet = [t for t, h in self._held.items() if not 0 <= now_ns - h.active_ns < self.quiet_ns]
        return [s for t in quiet for s in self._held.pop(t).samples]
