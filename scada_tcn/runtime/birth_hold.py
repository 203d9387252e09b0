"""Sparkplug births' values held back while their turbine's stored history comes in.

An edge node that stores and forwards (its link was down, or its primary host offline: `runtime.presence`)
publishes, when it is back, its births first, with the values read now, and then the history it stored, as data
messages whose metrics are flagged `is_historical`, oldest first. Taken in that order, a birth's values would
close the turbine's bins up to now (a sample closes its turbine's bins the grace, at most a step, before it:
`runtime.open_bins`) and every stored value after them would be late: the steps of the outage would be scored as
missing, and their data dropped.

`BirthHold` keeps a birth's samples (per turbine: a node's own, or a device's) out of the stream until the
turbine's data reaches them, and then merges them in by time:
* `hold(samples, now)` takes a birth's samples. A turbine's later birth joins what it holds (a node asked for
  its births in the middle of its history births again and goes on with the history), in place of the samples
  of the same stamps; it does not count as activity. A birth after a death starts afresh.
* `merge(samples, historical, now)` is asked for each data message of the turbines it names: history
  (`historical`: every value is `is_historical`) releases the held samples stamped no later than its own newest,
  a current message all of them; they come back merged with the message's samples in time order (held first on
  equal stamps). History that releases nothing keeps the turbine active.
* `drop(turbines, now, wait_ns)`: a death's turbines. Their held samples are dropped, not taken: after the
  death nothing says where the turbine's history will start, and the node births again when it is back (a node
  that reconnects in the middle of its history: its old connection's will comes first). `drop` says how many.
  The turbine stays in `turbines()`, holding nothing, until its next birth, or `quiet_ns` and `wait_ns` after
  the death: its history may go on after the birth. With `wait_ns`, every turbine of the death stays so (a node
  that stores what it reads while its link is down forwards it when back: `ingest.sparkplug_history_wait_s`).
* `due(now, drained)`: the held samples of turbines that sent no history for `quiet_ns` since they were first
  held (a steady report-by-exception node sends nothing after its birth; history that pauses that long is taken
  as done), once the caller has read what has come (`drained`), and after twice that whatever it has read; a
  clock set back releases them.
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
    active_ns: int  # the wall clock when the turbine was first held, or last sent history
    until_ns: int = 0  # a death's turbine: held (holding nothing) at least until then


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
        """Hold a birth's samples (with what their turbines already hold, but for those of the same stamps)."""
        by_turbine: dict[str, list[Sample]] = {}
        for s in samples:
            by_turbine.setdefault(s.turbine, []).append(s)
        for t, new in by_turbine.items():
            h = self._held.get(t)
            if h is None or not h.samples:  # (after a death: afresh)
                self._held[t] = _Held(new, now_ns)
            else:
                stamps = {s.ts_ns for s in new}
                self._held[t] = h._replace(samples=[*(s for s in h.samples if s.ts_ns not in stamps), *new])

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
            if historical:  # what it reached goes, the rest waits on
                reach = max(s.ts_ns for s in samples if s.turbine == t)
                released += [s for s in h.samples if s.ts_ns <= reach]
                self._held[t] = h._replace(samples=[s for s in h.samples if s.ts_ns > reach], active_ns=now_ns)
            else:
                released += self._held.pop(t).samples
        if not released:
            return samples
        return sorted([*released, *samples], key=lambda s: s.ts_ns)  # stable: held first on equal stamps

    def drop(self, turbines: Iterable[str] | None = None, now_ns: int = 0, wait_ns: int = 0) -> int:
        """Drop the held samples of `turbines` (None: all, and forget them); how many were dropped. A death's
        turbines stay held, holding nothing, for `quiet_ns` and `wait_ns` (see the module docstring)."""
        if turbines is None:
            n = sum(len(h.samples) for h in self._held.values())
            self._held.clear()
            return n
        n = 0
        for t in turbines:
            h = self._held.get(t)
            if h is not None or wait_ns > 0:
                n += 0 if h is None else len(h.samples)
                self._held[t] = _Held([], now_ns, now_ns + wait_ns)
        return n

    def due(self, now_ns: int, drained: bool) -> list[Sample]:
        """The held samples of turbines without history for `quiet_ns` (`drained`: the caller has read what has
        come; else twice that) and past a death's wait, released in the order held; all of them when the clock
        was set back behind a turbine's last activity."""
        limit = self.quiet_ns if drained else 2 * self.quiet_ns
        quiet = [
            t
            for t, h in self._held.items()
            if now_ns < h.active_ns or (now_ns - h.active_ns >= limit and now_ns >= h.until_ns)
        ]
        return [s for t in quiet for s in self._held.pop(t).samples]
