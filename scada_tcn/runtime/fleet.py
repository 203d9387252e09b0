"""Per-turbine streaming state of a fleet: binning -> model-input rows -> a ring buffer of the last L steps.

Contract
--------
* `Fleet.add(turbine, ts_ns, values (C,))` stores one validated sample (see `runtime.telemetry`); bins of that
  turbine close when its sample of a later bin, stamped the grace (at most a step) after their end, arrives
  (`BinAccumulator.add`). `Fleet.close_until(now_ns)` closes
  every bin whose end + grace <= now_ns (the daemon's tick), empty ones included (gaps become missing values).
  `Fleet.add_many(turbines, ts_ns, values)` stores a block of samples sorted by time (replay's chunks) with one
  vectorised call per turbine (`BinAccumulator.add_many_deferred`): the same steps, in the same closing order
  (each bin is ordered by the sample that closed it), as adding the rows one by one.
* Closed bins are aggregated (`binning.aggregate_bins`: every bin the fleet closed since the last drain, all
  turbines in one vectorised call) and go through the fleet's `StreamPreprocessor` (the same math as
  scada-prepare: winsor caps, features, masks, flags, the bundle's scaler and fill value) into a ring buffer of
  the last L steps per turbine.
  They are processed when the steps are drained (or the state is taken), all turbines together: round r holds
  each turbine's r-th bin closed since the last drain, one vectorised call per round.
* Every closed step becomes a `Step` in `drain()`, in closing order (per turbine in time order): the step's own
  model-input rows, the present fraction of its L-step window (NaN while the turbine has fewer than L steps) and,
  when the fleet is built with `windows=True` (the window engine), the window itself (X (L, F) float32, M_miss
  (L, F) uint8, Flags (L, R) float32, copies) once the turbine has L steps (`window=None` before). Steps are never
  emitted twice: a closed bin never reopens (late samples are counted in `late_dropped` and dropped).
  `max_per_stamp` (the daemon's `ingest.max_values_per_stamp`; None in replay) bounds each turbine's values of
  one stamp and channel (`BinAccumulator`): beyond it a sample is dropped ("full" from `add`).
  `window_of(turbine)` copies a turbine's current window out of the ring (the streaming engine's restart).
* Turbines get slots 0, 1, ... in order of first sample; at most `max_turbines` (ValueError beyond: the caller
  checks `has_room` first). `state_dict()` / `load_state_dict()` carry plain data per turbine.
Caller arrays are never modified.
"""

from __future__ import annotations

import math
from collections.abc import KeysView
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.binning import BinAccumulator, RawBins, aggregate_bins
from scada_tcn.runtime.pipeline import StreamPreprocessor
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.runtime.windows import missing_now

__all__ = ["Fleet", "Step", "Window"]

_NO_SAMPLE = np.iinfo(np.int64).max  # open_from of a turbine without a sample yet


class Window(NamedTuple):
    X: np.ndarray  # (L, F) float32
    M_miss: np.ndarray  # (L, F) uint8, 1 = present
    Flags: np.ndarray  # (L, R) float32


class Step(NamedTuple):
    turbine: str
    slot: int
    end_ns: int  # bin label (end of the step), ns UTC
    n_steps: int  # steps this turbine has closed so far, this one included
    missing_now: float  # share of missing features at this step
    window: Window | None  # None while warming up (n_steps < L) or when the fleet keeps no windows
    repeat_now: np.ndarray  # (S,) uint8 exact-repeat codes of the spec's repeat_channels at this step
    rows: Window  # this step's own rows: X (F,), M_miss (F,), Flags (R,)
    present: float  # present fraction of the L-step window ending here; NaN while n_steps < L

    @property
    def ready(self) -> bool:
        """The turbine has L steps: the step has a whole window behind it."""
        return not math.isnan(self.present)


@dataclass
class _Turbine:
    slot: int
    acc: BinAccumulator


class _Rings:
    """Every turbine's last L model-input rows, one array per field, indexed by slot: row (n - 1) % L of a slot
    is its latest step. Grows by doubling."""

    def __init__(self, L: int, F: int, R: int) -> None:
        self.L = L
        self.X = np.zeros((0, L, F), dtype=np.float32)
        self.M = np.zeros((0, L, F), dtype=np.uint8)
        self.Flags = np.zeros((0, L, R), dtype=np.float32)
        self.row_present = np.zeros((0, L), dtype=np.int64)  # present elements of each row
        self.n = np.zeros(0, dtype=np.int64)  # steps closed so far
        self.present = np.zeros(0, dtype=np.int64)  # present elements in the ring
        self.last_end = np.zeros(0, dtype=np.int64)  # end of the latest closed step, ns

    def make_room(self, slot: int) -> None:
        """Room for `slot` (zeros)."""
        cap = len(self.n)
        if slot < cap:
            return
        more = max(slot + 1, 2 * cap) - cap
        for name in ("X", "M", "Flags", "row_present", "n", "present", "last_end"):
            a = getattr(self, name)
            setattr(self, name, np.concatenate([a, np.zeros((more, *a.shape[1:]), dtype=a.dtype)]))

    def push(self, slots: np.ndarray, ends: np.ndarray, X: np.ndarray, M: np.ndarray, Flags: np.ndarray) -> None:
        """Append one row to each of `slots` (distinct)."""
        i = self.n[slots] % self.L
        n_present = M.sum(axis=1, dtype=np.int64)
        self.present[slots] += n_present - self.row_present[slots, i]
        self.row_present[slots, i] = n_present
        self.X[slots, i], self.M[slots, i], self.Flags[slots, i] = X, M, Flags
        self.n[slots] += 1
        self.last_end[slots] = ends

    def window(self, slot: int) -> Window:
        """The slot's last L rows, oldest first (copies)."""
        order = (np.arange(self.L) + self.n[slot]) % self.L
        return Window(self.X[slot][order], self.M[slot][order], self.Flags[slot][order])

    def load(self, slot: int, X: np.ndarray, M: np.ndarray, Flags: np.ndarray, n: int, last_end: int) -> None:
        self.X[slot], self.M[slot], self.Flags[slot] = X, M, Flags
        self.row_present[slot] = self.M[slot].sum(axis=1)
        self.present[slot] = int(self.M[slot].sum())
        self.n[slot], self.last_end[slot] = n, last_end


class Fleet:
    """Streaming state of every turbine; see the module docstring."""

    def __init__(
        self,
        spec: PipelineSpec,
        scaler: RobustScaler,
        L: int,
        grace_seconds: float,
        max_turbines: int,
        windows: bool = True,
        max_per_stamp: int | None = None,
    ):
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"Fleet: L must be an integer >= 1, got {L!r}")
        if isinstance(max_turbines, bool) or not isinstance(max_turbines, int) or max_turbines < 1:
            raise ValueError(f"Fleet: max_turbines must be an integer >= 1, got {max_turbines!r}")
        self.spec = spec
        self.scaler = scaler
        self.L = L
        self.grace_seconds = grace_seconds
        self.max_turbines = max_turbines
        self.windows = windows
        self.max_per_stamp = max_per_stamp
        # validates grace, bound and binning once; the fleet's clock
        self._probe = BinAccumulator(spec, grace_seconds, max_per_stamp)
        self._plan = self._probe.plan
        self._turbines: dict[str, _Turbine] = {}
        self._slots: list[tuple[str, _Turbine]] = []  # by slot
        self._open_from = np.zeros(0, dtype=np.int64)  # by slot: its accumulator's open_from (_NO_SAMPLE before one)
        self._pre = StreamPreprocessor(spec, scaler, slots=0)  # one slot per turbine
        self._rings = _Rings(L, spec.n_features, spec.n_flags)
        self._closed: list[tuple[str, _Turbine, RawBins, Any]] = []  # closed bins not aggregated yet (+ closers)
        self._arrivals = 0  # samples added so far: a closed bin's closing order is the sample that closed it
        self._pending: list[Step] = []
        self.bins_closed = 0

    def __len__(self) -> int:
        return len(self._turbines)

    @property
    def turbines(self) -> list[str]:
        return list(self._turbines)

    @property
    def turbines_set(self) -> KeysView[str]:
        """The known turbine ids (a read-only view, O(1) membership)."""
        return self._turbines.keys()

    def has_room(self, turbine: str) -> bool:
        return turbine in self._turbines or len(self._turbines) < self.max_turbines

    def slot_of(self, turbine: str) -> int:
        return self._turbines[turbine].slot

    def late_dropped(self) -> int:
        return sum(t.acc.late_dropped for t in self._turbines.values())

    def late_by_turbine(self, top: int) -> dict[str, int]:
        """The `top` turbines with the most late samples (see `late_dropped`), most first (ties by id)."""
        counts = [(t.acc.late_dropped, name) for name, t in list(self._turbines.items()) if t.acc.late_dropped]
        return {name: n for n, name in sorted(counts, key=lambda x: (-x[0], x[1]))[:top]}

    def _new(self, turbine: str) -> _Turbine:
        if len(self._turbines) >= self.max_turbines:
            raise ValueError(f"Fleet: already {self.max_turbines} turbines (ingest.max_turbines); {turbine!r} refused")
        acc = BinAccumulator(self.spec, self.grace_seconds, self.max_per_stamp)
        t = _Turbine(slot=self._pre.add_slot(), acc=acc)
        self._rings.make_room(t.slot)
        if t.slot >= self._open_from.size:
            more = max(t.slot + 1, 2 * self._open_from.size) - self._open_from.size
            self._open_from = np.concatenate([self._open_from, np.full(more, _NO_SAMPLE, dtype=np.int64)])
        self._turbines[turbine] = t
        self._slots.append((turbine, t))
        return t

    def register(self, turbine: str) -> int:
        """The turbine's slot, given it now when it has none (a turbine known before its first sample: it closes
        no bin and holds back no fleet step until it has one). ValueError beyond `max_turbines`."""
        return (self._turbines.get(turbine) or self._new(turbine)).slot

    def take_open_bins(self, turbine: str, accumulator: dict[str, Any]) -> int:
        """Give the turbine (a slot, as `register`) the open bins of an accumulator state another spec saved
        (`BinAccumulator.take_over`); returns the samples taken. ValueError beyond `max_turbines`; SpecError for
        another dt or channels and InputError for a malformed state, before the turbine is given a slot."""
        acc = BinAccumulator(self.spec, self.grace_seconds, self.max_per_stamp)
        n = acc.take_over(accumulator)
        t = self._turbines.get(turbine) or self._new(turbine)
        t.acc = acc
        self._track(t)
        return n

    def open_samples(self, turbines: list[str]) -> int:
        """The samples the open bins of `turbines` hold."""
        return sum(self._turbines[t].acc.open_samples for t in turbines)

    def add(self, turbine: str, ts_ns: int, values: np.ndarray) -> str | None:
        """Store one sample; returns why it was dropped: "late" (its bin had closed) or "full" (each of its channels
        has `max_per_stamp` values of its stamp in the open bins), None when it was stored."""
        t = self._turbines.get(turbine) or self._new(turbine)
        late, full = t.acc.late_dropped, t.acc.full_dropped
        self._emit(turbine, t, t.acc.add_deferred(ts_ns, values), self._arrivals)
        self._arrivals += 1
        return "late" if t.acc.late_dropped > late else "full" if t.acc.full_dropped > full else None

    def add_many(self, turbines: np.ndarray, ts_ns: np.ndarray, values: np.ndarray) -> int:
        """Store n samples in arrival order, turbines (n,) str, ts_ns (n,) int64 non-decreasing per turbine (a table
        sorted by time), values (n, C): the same state, steps and closing order as n `add` calls, one vectorised
        call per turbine. Returns the number of late samples dropped."""
        names = np.asarray(turbines)
        ts = np.asarray(ts_ns)
        if names.shape != ts.shape or ts.ndim != 1 or np.shape(values)[:1] != ts.shape:
            raise ValueError(f"Fleet.add_many: turbines {names.shape}, ts_ns {ts.shape} and values "
                             f"{np.shape(values)} must have one row per sample")  # fmt: skip
        uniq, first, inv = np.unique(names, return_index=True, return_inverse=True)
        by_turbine = np.argsort(inv, kind="stable")  # each turbine's rows in arrival order
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=uniq.size))])
        late = 0
        for u in np.argsort(first):  # new turbines get their slots in order of first sample, as with `add`
            rows = by_turbine[bounds[u] : bounds[u + 1]]
            name = str(uniq[u])
            t = self._turbines.get(name) or self._new(name)
            raw, closers, n_late = t.acc.add_many_deferred(ts[rows], values[rows])
            self._emit(name, t, raw, self._arrivals + rows[closers])
            late += n_late
        self._arrivals += ts.size
        return late

    def close_until(self, now_ns: int) -> None:
        """Close, for every turbine, the bins whose end + grace <= now_ns."""
        last = self._probe.closable_through(now_ns)  # the same for every turbine
        for slot in np.flatnonzero(self._open_from[: len(self._slots)] <= last).tolist():  # most ticks close nothing
            name, t = self._slots[slot]
            self._emit(name, t, t.acc.close_until_deferred(now_ns), self._arrivals)

    def open_from(self) -> int | None:
        """The earliest bin end that some turbine has not closed yet (None without turbines): every step before it
        is closed, for the whole fleet, and will not be emitted again."""
        first = int(self._open_from[: len(self._slots)].min(initial=_NO_SAMPLE))
        return None if first == _NO_SAMPLE else first

    def newest_ns(self) -> int:
        """The newest stamp the fleet holds, over its open bins' samples and its closed steps' ends (0 when it
        holds none): a lower bound of the time at which its state was taken."""
        closed = int(self._rings.last_end[: len(self._slots)].max(initial=0))
        return max([closed, *(n for _, t in self._slots if (n := t.acc.newest_ns) is not None)])

    def close_turbine_until(self, turbine: str, now_ns: int) -> None:
        """Close one turbine's bins whose end + grace <= now_ns (replay ends each turbine at its last sample)."""
        t = self._turbines[turbine]
        self._emit(turbine, t, t.acc.close_until_deferred(now_ns), self._arrivals)

    def _emit(self, name: str, t: _Turbine, raw: RawBins | None, closer: Any) -> None:
        """After any change to `t.acc`: track it; queue closed bins (`closer`: the arrival index of the sample that
        closed them, one int or one per bin)."""
        self._track(t)
        if raw is not None:
            self._closed.append((name, t, raw, closer))
            self.bins_closed += raw.n_bins

    def _track(self, t: _Turbine) -> None:
        """Keep the fleet's copy of the accumulator's open_from (`open_from`, `close_until` read them as one array)."""
        if t.acc.open_from is not None:
            self._open_from[t.slot] = t.acc.open_from

    def _process(self) -> None:
        """Closed bins -> model-input rows -> ring buffers and Steps, a round of distinct turbines at a time."""
        raw, self._closed = self._closed, []
        if not raw:
            return
        values = aggregate_bins([r for _, _, r, _ in raw], self._plan)  # every closed bin of the fleet at once
        dt = self._plan.dt_ns
        closed = [(name, t, r.start_ns + i * dt) for name, t, r, _ in raw for i in range(r.n_bins)]
        closers = self._closers(raw)
        slots = np.array([t.slot for _, t, _ in closed], dtype=np.int64)
        order = np.argsort(slots, kind="stable")  # a turbine's bins stay in time order
        starts = np.flatnonzero(np.r_[True, slots[order][1:] != slots[order][:-1]])
        rank = np.empty(slots.size, dtype=np.int64)
        rank[order] = np.arange(slots.size) - np.repeat(starts, np.diff(np.r_[starts, slots.size]))
        ends = np.array([e for _, _, e in closed], dtype=np.int64)
        steps: list[Step | None] = [None] * len(closed)
        LF = self.L * self.spec.n_features
        rings = self._rings
        for r in range(int(rank.max()) + 1):
            idx = np.flatnonzero(rank == r)
            sl = slots[idx]
            rows = self._pre.step_many(sl, values[idx])
            rings.push(sl, ends[idx], rows.X, rows.M_miss, rows.Flags)
            n = rings.n[sl]
            ready = n >= self.L
            present = np.where(ready, rings.present[sl] / LF if LF else 1.0, np.nan).tolist()
            missing = missing_now(rows.M_miss).tolist()
            for k, (b, slot, n_k, ready_k) in enumerate(zip(idx.tolist(), sl.tolist(), n.tolist(), ready.tolist())):
                window = rings.window(slot) if ready_k and self.windows else None
                own = Window(rows.X[k], rows.M_miss[k], rows.Flags[k])
                steps[b] = Step(closed[b][0], slot, closed[b][2], n_k, missing[k], window, rows.Repeat[k], own,
                                present[k])  # fmt: skip
        if (closers[1:] < closers[:-1]).any():  # bins queued turbine by turbine (`add_many`): closing order
            steps = [steps[i] for i in np.argsort(closers, kind="stable")]
        self._pending.extend(steps)  # type: ignore[arg-type]

    @staticmethod
    def _closers(raw: list[tuple[str, _Turbine, RawBins, Any]]) -> np.ndarray:
        """The arrival index of the sample that closed each queued bin, in queue order."""
        if all(type(c) is int for *_, c in raw):  # `add` and the ticks: one closer for all the bins of a turbine
            return np.repeat(np.array([c for *_, c in raw], dtype=np.int64), [r.n_bins for _, _, r, _ in raw])
        return np.concatenate([np.broadcast_to(np.asarray(c, dtype=np.int64), r.n_bins) for _, _, r, c in raw])

    def window_of(self, turbine: str) -> tuple[Window, int, int]:
        """(the turbine's last min(n_steps, L) rows, oldest first, as a Window; n_steps; end of its last step)."""
        self._process()
        slot = self._turbines[turbine].slot
        w = self._rings.window(slot)
        n = int(self._rings.n[slot])
        k = min(n, self.L)
        return (
            Window(w.X[self.L - k :], w.M_miss[self.L - k :], w.Flags[self.L - k :]),
            n,
            int(self._rings.last_end[slot]),
        )

    def drain(self) -> list[Step]:
        """The steps closed since the last drain, in closing order; the pending list is emptied."""
        self._process()
        out, self._pending = self._pending, []
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain data: per turbine (in slot order) its accumulator, preprocessor, ring buffers and step count."""
        self._process()
        return {
            "turbines": [
                {
                    "name": name,
                    "accumulator": t.acc.state_dict(),
                    "preprocessor": self._pre.state_dict(t.slot),
                    "X": self._rings.X[t.slot].copy(),
                    "M": self._rings.M[t.slot].copy(),
                    "Flags": self._rings.Flags[t.slot].copy(),
                    "n_steps": int(self._rings.n[t.slot]),
                    "last_end": int(self._rings.last_end[t.slot]),
                }
                for name, t in self._turbines.items()
            ],
            "bins_closed": self.bins_closed,
        }

    @staticmethod
    def select_state(state: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
        """A `state_dict()` of the old slots `keep` only (increasing): their turbines, in slot order, renumbered
        from 0 (`runtime.slots`)."""
        turbines = state["turbines"]
        return {"turbines": [turbines[int(i)] for i in keep], "bins_closed": state["bins_closed"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` from a Fleet with the same spec, scaler and L (pending steps are not kept)."""
        if not isinstance(state, dict) or set(state) != {"turbines", "bins_closed"}:
            raise ValueError("Fleet.load_state_dict: expected keys ['bins_closed', 'turbines']")
        self._turbines, self._slots, self._pending, self._closed = {}, [], [], []
        self._open_from = np.zeros(0, dtype=np.int64)
        self._pre = StreamPreprocessor(self.spec, self.scaler, slots=0)
        rings = self._rings = _Rings(self.L, self.spec.n_features, self.spec.n_flags)
        for d in state["turbines"]:
            t = self._new(str(d["name"]))
            t.acc.load_state_dict(d["accumulator"])
            self._track(t)
            self._pre.load_state_dict(d["preprocessor"], t.slot)
            arrays = {}
            for key in ("X", "M", "Flags"):
                like = getattr(rings, key)[t.slot]
                arrays[key] = np.asarray(d[key], dtype=like.dtype)
                if arrays[key].shape != like.shape:
                    raise ValueError(f"Fleet.load_state_dict: {key} of {d['name']!r} has shape {arrays[key].shape}")
            rings.load(t.slot, arrays["X"], arrays["M"], arrays["Flags"], int(d["n_steps"]), int(d["last_end"]))
        self.bins_closed = int(state["bins_closed"])
