"""Sparkplug births' values held back while their turbine's stored history comes in.

An edge node that stores and forwards (its link was down, or its primary host offline: `runtime.presence`)
publishes, when it is back, its births first, with the values read now, and then the history it stored, as data
messages whose metrics are flagged `is_historical`, oldest first. Taken in that order, a birth's values would
close the turbine's bins up to now (a sample closes its turbine's bins the grace, at most a step, before it:
`runtime.open_bins`) and every stored value after them would be late: the steps of the outage would be scored as
missing, and their data dropped.

`BirthHold` keeps a birth's samples (per turbine: a node's own, or a device's) out of the stream until the
turbine's data reaches them:
* `hold(samples, now)` takes a birth's samples; what an earlier birth of the same turbine still held comes back,
  to be admitted first (a birth never overtakes another).
* `before(samples, historical, now)` is asked for each data message, before its samples are admitted: a held
  birth of its turbine comes back (to go first) unless the message is history older than the birth (all its
  values `is_historical`, stamped before the birth's newest stamp), which keeps it held a while longer.
* `release(turbines)`: a death's turbines (their births' values were read, whatever comes next).
* `due(now, everything)`: births whose turbine has sent nothing for `quiet_ns` (a steady report-by-exception
  node sends nothing after its birth; history that pauses that long is taken as done), or all (at stop).
Samples come back in the order held. Nothing is dropped: every held sample comes back once. Births are kept in
memory only (as the decoder's aliases are): a crash loses the values of births not yet released, and the
decoder asks for the births again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from scada_tcn.runtime.telemetry import Sample

__all__ = ["BirthHold"]


class _Held(NamedTuple):
    samples: list[Sample]
    newest_ns: int  # the birth's newest stamp: history older than it keeps the birth held
    active_ns: int  # the wall clock when the turbine last held it or sent history


class BirthHold:
    """Births' samples by turbine, held while that turbine's history comes (see the module docstring)."""

    def __init__(self, quiet_ns: int) -> None:
        self.quiet_ns = int(quiet_ns)
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, samples: list[Sample], now_ns: int) -> list[Sample]:
        """Hold a birth's samples; returns those an earlier birth of their turbines still held, to admit first."""
        out = self.release(dict.fromkeys(s.turbine for s in samples))
        for s in samples:
            h = self._held.get(s.turbine)
            if h is None:
                self._held[s.turbine] = _Held([s], s.ts_ns, now_ns)
            else:
                h.samples.append(s)
                self._held[s.turbine] = h._replace(newest_ns=max(h.newest_ns, s.ts_ns))
        return out

    def before(self, samples: list[Sample], historical: bool, now_ns: int) -> list[Sample]:
        """The held samples to admit before a data message's `samples`; `historical`: all its values are history."""
        if not self._held:
            return []
        out: list[Sample] = []
        for t in dict.fromkeys(s.turbine for s in samples):
            h = self._held.get(t)
            if h is None:
                continue
            if historical and all(s.ts_ns < h.newest_ns for s in samples if s.turbine == t):
                self._held[t] = h._replace(active_ns=now_ns)
            else:
                out += self._held.pop(t).samples
        return out

    def release(self, turbines: Iterable[str]) -> list[Sample]:
        """The held samples of `turbines`, released."""
        out: list[Sample] = []
        for t in turbines:
            h = self._held.pop(t, None)
            if h is not None:
                out += h.samples
        return out

    def due(self, now_ns: int, everything: bool = False) -> list[Sample]:
        """The held samples of turbines quiet for `quiet_ns` (or all), released; a clock set back releases them."""
        quiet = [
            t for t, h in self._held.items() if everything or not 0 <= now_ns - h.active_ns < self.quiet_ns
        ]  # (< 0: a clock set back)
        return self.release(quiet)
