"""Sparkplug births' values held back while their turbine's stored history comes in.

An edge node that stores and forwards (its link was down, or its primary host offline: `runtime.presence`)
publishes, when it is back, its births first, with the values read now, and then the history it stored, as data
messages whose metrics are flagged `is_historical`, oldest first. Taken in that order, a birth's values would
close the turbine's bins up to now (a sample closes its turbine's bins the grace, at most a step, before it:
`runtime.open_bins`) and every stored value after them would be late: the steps of the outage would be scored as
missing, and their data dropped.

`BirthHold` keeps a birth's samples (per turbine: a node's own, or a device's) out of the stream until the
turbine's data reaches them, and then merges them in by time. The turbines it holds (`turbines()`) are those
whose history may still come: the caller keeps its clock from closing their steps.
* `hold(samples, now)` takes a birth's samples. A turbine's later birth joins what it holds (a node asked for
  its births in the middle of its history births again and goes on with the history), in place of the samples
  of the same stamps; it does not count as activity. A birth after a death starts afresh.
* `merge(samples, historical, now)` is asked for each data message of the turbines it names: history
  (`historical`: every value is `is_historical`) releases the held samples stamped no later than its own newest,
  a current message all of them; they come back merged with the message's samples in time order (held first on
  equal stamps). History keeps the turbine active; current data ends its holding.
* `drop(turbines, now)`: a death's turbines. Their held samples are dropped, not taken: after the death nothing
  says where the turbine's history will start, and the node births again when it is back (a node that
  reconnects in the middle of its history: its old connection's will comes first). `drop` says how many. A
  turbine held stays so, holding nothing, until its next birth or `quiet_ns`: its history may go on after it.
* `wait(turbines, now, wait_ns)`: an NDEATH's turbines (a node that stores what it reads while its link is down
  forwards it when back: `ingest.sparkplug_history_wait_s`) stay held until their next birth, or `wait_ns` after
  the death. A later death, before the turbine's current data or the end of its wait, does not extend the wait:
  a node whose sessions keep dropping holds the caller's clock `wait_ns` at a time, not for good.
* `due(now, drained)`: the held samples of turbines that sent no history for `quiet_ns` since they were first
  held (a steady report-by-exception node sends nothing after its birth; history that pauses that long is taken
  as done), once the caller has read what has come (`drained`), and after twice that whatever it has read; the
  turbines of deaths past their wait; a clock set back releases them.
Births' values are kept in memory only (as the decoder's aliases are): at stop (`drop` of all) and in a crash,
those not yet released are lost (the node publishes them again at its next session). The waits after deaths are
kept in the daemon's state file (`waits`, `resume`): a restart goes on waiting for the history of a node that died
before it (a crash, for those of deaths before the last snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from scada_tcn.runtime.telemetry import Sample

__all__ = ["BirthHold"]


class _Held(NamedTuple):
    samples: list[Sample]  # in the order held
    active_ns: int  # the wall clock when the turbine was first held, or last sent history
    until_ns: int = 0  # the end of the wait after its first death since current data (`wait`); 0: none
    dead: bool = False  # a death's wait, no birth since: held until `until_ns`, not for `quiet_ns`


class BirthHold:
    """Births' samples by turbine, held while that turbine's history comes (see the module docstring)."""

    def __init__(self, quiet_ns: int) -> None:
        self.quiet_ns = int(quiet_ns)
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def turbines(self) -> list[str]:
        """The turbines held: their history may still come."""
        return list(self._held)

    def hold(self, samples: list[Sample], now_ns: int) -> None:
        """Hold a birth's samples (with what their turbines already hold, but for those of the same stamps)."""
        by_turbine: dict[str, list[Sample]] = {}
        for s in samples:
            by_turbine.setdefault(s.turbine, []).append(s)
        for t, new in by_turbine.items():
            h = self._held.get(t)
            if h is None or h.dead:  # (after a death: afresh, its wait kept for the next death)
                self._held[t] = _Held(new, now_ns, 0 if h is None else h.until_ns)
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
                kept = [s for s in h.samples if s.ts_ns > reach]
                self._held[t] = h._replace(samples=kept, active_ns=now_ns, dead=False)
            else:
                released += self._held.pop(t).samples
        if not released:
            return samples
        return sorted([*released, *samples], key=lambda s: s.ts_ns)  # stable: held first on equal stamps

    def drop(self, turbines: Iterable[str] | None = None, now_ns: int = 0) -> int:
        """Drop the held samples of `turbines` (None: all, and forget them); how many were dropped. Those held stay
        so, holding nothing, for `quiet_ns` (see the module docstring)."""
        if turbines is None:
            n = sum(len(h.samples) for h in self._held.values())
            self._held.clear()
            return n
        n = 0
        for t in turbines:
            h = self._held.get(t)
            if h is not None:
                n += len(h.samples)
                self._held[t] = _Held([], now_ns, h.until_ns, h.dead)
        return n

    def wait(self, turbines: Iterable[str], now_ns: int, wait_ns: int) -> None:
        """Hold an NDEATH's turbines, holding nothing, until their next birth or `wait_ns` from now; a wait still
        running is not extended (see the module docstring)."""
        for t in turbines:
            h = self._held.get(t)
            until = h.until_ns if h is not None and h.until_ns > now_ns else now_ns + int(wait_ns)
            self._held[t] = _Held([], now_ns, until, True)

    def waits(self, now_ns: int) -> dict[str, int]:
        """The turbines of deaths whose wait runs at `now_ns` (no birth since), and when each wait ends."""
        return {t: h.until_ns for t, h in self._held.items() if h.dead and h.until_ns > now_ns}

    def resume(self, waits: dict[str, int], now_ns: int) -> None:
        """Wait again for the turbines of `waits` (`waits()` of an earlier run: turbine -> the end of its wait),
        those still running at `now_ns`; a turbine held already keeps its own state."""
        for t, until in waits.items():
            if until > now_ns and t not in self._held:
                self._held[t] = _Held([], now_ns, until, True)

    def due(self, now_ns: int, drained: bool) -> list[Sample]:
        """The held samples of turbines without history for `quiet_ns` (`drained`: the caller has read what has
        come; else twice that), released in the order held, and the turbines of deaths past their wait; all of
        them when the clock was set back behind a turbine's last activity."""
        limit = self.quiet_ns if drained else 2 * self.quiet_ns

        def over(h: _Held) -> bool:
            return now_ns < h.active_ns or (now_ns >= h.until_ns if h.dead else now_ns - h.active_ns >= limit)

        quiet = [t for t, h in self._held.items() if over(h)]
        return [s for t in quiet for s in self._held.pop(t).samples]
