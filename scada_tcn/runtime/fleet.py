"""Per-turbine streaming state of a fleet: binning -> model-input rows -> a ring buffer of the last L steps.

Contract
--------
* `Fleet.add_batch(turbines, ts_ns, values (n, C))` stores a loop iteration's validated samples (see
  `runtime.telemetry`), any turbines in arrival order, binned for the whole fleet in a few vectorised passes
  (`open_bins.OpenBins.add`: the open bins of every turbine are one columnar store); `Fleet.add` stores one. Bins
  of a turbine close when its sample of a later bin, stamped the grace (at most a step) after their end, arrives.
  `Fleet.close_until(now_ns)` closes every bin whose end + grace <= now_ns (the daemon's tick), empty ones included
  (gaps become missing values). `Fleet.add_many(turbines, ts_ns, values)` stores a block of samples sorted by
  time (replay's chunks) with one vectorised call per turbine (`OpenBins.add_sorted`). Each gives the same steps,
  in the same closing order (each bin is ordered by the sample that closed it), as adding the rows one by one.
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
  one stamp and channel (`OpenBins`): beyond it a sample is dropped ("full" from `add`).
  `window_of(turbine)` copies a turbine's current window out of the ring (the streaming engine's restart).
* Turbines get slots 0, 1, ... in order of first sample; at most `max_turbines` (ValueError beyond: the caller
  checks `has_room` first). `state_dict()` / `load_state_dict()` carry plain data per turbine.
Caller arrays are never modified.
"""

from __future__ import annotations

import math
from collections.abc import KeysView
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.binning import _check_int, _check_ts, _check_values, aggregate_bins, closed_slots_ends
from scada_tcn.runtime.open_bins import FULL, LATE, NO_SAMPLE, ClosedBins, OpenBins
from scada_tcn.runtime.pipeline import StreamPreprocessor
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.slots import Chain
from scada_tcn.runtime.spec import PipelineSpec
from scada_tcn.runtime.windows import missing_now

__all__ = ["NO_STAMP", "Dropped", "Fleet", "Step", "Window"]

NO_STAMP = np.iinfo(np.int64).min  # `Fleet.open_stamp` of a turbine without a sample


class Dropped(NamedTuple):
    """The samples of an `add_batch` call that were not stored, by their index in the call: `late` (their bin had
    closed) and `full` (each of their channels had `max_per_stamp` values of their stamp)."""

    late: np.ndarray
    full: np.ndarray


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
        self._bins = OpenBins(spec, grace_seconds, max_per_stamp)  # every turbine's open bins, by slot
        self._plan = self._bins.plan
        self._turbines: dict[str, int] = {}  # name -> slot
        self._names: list[str] = []  # by slot
        self._pre = StreamPreprocessor(spec, scaler, slots=0)  # one slot per turbine
        self._rings = _Rings(L, spec.n_features, spec.n_flags)
        self._closed: list[ClosedBins] = []  # closed bins not aggregated yet
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
        return self._turbines[turbine]

    def late_dropped(self) -> int:
        return int(self._bins.late_dropped.sum())

    def late_by_turbine(self, top: int) -> dict[str, int]:
        """The `top` turbines with the most late samples (see `late_dropped`), most first (ties by id)."""
        late = self._bins.late_dropped
        counts = [(int(late[s]), self._names[s]) for s in np.flatnonzero(late).tolist()]
        return {name: n for n, name in sorted(counts, key=lambda x: (-x[0], x[1]))[:top]}

    def _new(self, turbine: str) -> int:
        if len(self._turbines) >= self.max_turbines:
            raise ValueError(f"Fleet: already {self.max_turbines} turbines (ingest.max_turbines); {turbine!r} refused")
        slot = self._pre.add_slot()
        if self._bins.add_slot() != slot:
            raise RuntimeError(f"Fleet: the open bins and the preprocessor disagree on the slot of {turbine!r}")
        self._rings.make_room(slot)
        self._turbines[turbine] = slot
        self._names.append(turbine)
        return slot

    def _slot(self, turbine: str) -> int:
        slot = self._turbines.get(turbine)
        return self._new(turbine) if slot is None else slot

    def register(self, turbine: str) -> int:
        """The turbine's slot, given it now when it has none (a turbine known before its first sample: it closes
        no bin and holds back no fleet step until it has one). ValueError beyond `max_turbines`."""
        return self._slot(turbine)

    def take_open_bins(self, turbine: str, accumulator: dict[str, Any]) -> int:
        """Give the turbine (a slot, as `register`) the open bins of an accumulator state another spec saved
        (through this spec's range filter: the stricter of the two ranges holds; other channels taken by name);
        returns the samples taken. ValueError beyond `max_turbines`; SpecError for another dt or no channel in
        common and InputError for a malformed state, before the turbine is given a slot."""
        checked = self._bins.checked_state(accumulator, foreign=True)
        return self._bins.load_state(self._slot(turbine), checked, through_range=True)

    def open_samples(self, turbines: list[str]) -> int:
        """The samples the open bins of `turbines` hold."""
        held = self._bins.open_samples()
        return int(sum(held[self._turbines[t]] for t in turbines))

    def add(self, turbine: str, ts_ns: int, values: np.ndarray) -> str | None:
        """Store one sample; returns why it was dropped: "late" (its bin had closed) or "full" (each of its channels
        has `max_per_stamp` values of its stamp in the open bins), None when it was stored."""
        ts = _check_int(ts_ns, "ts_ns", self._plan.dt_ns)
        row = _check_values(values, (len(self._plan.channels),), self._plan)
        dropped = self.add_batch([turbine], np.array([ts], dtype=np.int64), row[None, :])
        return "late" if dropped.late.size else "full" if dropped.full.size else None

    def add_batch(self, turbines: list[str], ts_ns: np.ndarray, values: np.ndarray) -> Dropped:
        """Store n samples in arrival order (any turbines, any stamps): turbines (n,), ts_ns (n,) int64, values
        (n, C); new turbines get their slots in order of first sample. The same state, steps and closing order as
        n `add` calls, binned for the whole fleet at once. Returns the samples dropped, as `add` says (`Dropped`).
        Refused before anything changes (no sample stored, no turbine registered): invalid stamps or values
        (InputError), one turbine id per sample missing or new turbines beyond `max_turbines` (ValueError)."""
        ts = _check_ts(ts_ns, self._plan.dt_ns)
        values = _check_values(values, (ts.size, len(self._plan.channels)), self._plan)
        new = [t for t in dict.fromkeys(turbines) if t not in self._turbines]
        if len(turbines) != ts.size or len(self._turbines) + len(new) > self.max_turbines:
            raise ValueError(f"Fleet.add_batch: {len(turbines)} turbines for {ts.size} samples, or {len(new)} new "
                             f"turbines beyond max_turbines={self.max_turbines}: nothing stored")  # fmt: skip
        slots = np.array([self._slot(t) for t in turbines], dtype=np.int64)
        status, closed = self._bins.add(slots, ts, values, self._arrivals)
        self._queue(closed)
        self._arrivals += slots.size
        return Dropped(np.flatnonzero(status == LATE), np.flatnonzero(status == FULL))

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
            slot = self._slot(str(uniq[u]))
            closed, n_late = self._bins.add_sorted(slot, ts[rows], values[rows], self._arrivals + rows)
            self._queue(closed)
            late += n_late
        self._arrivals += ts.size
        return late

    def close_until(self, now_ns: int) -> None:
        """Close, for every turbine, the bins whose end + grace <= now_ns."""
        self._queue(self._bins.close_until(now_ns, self._arrivals))

    def open_from(self) -> int | None:
        """The earliest bin end that some turbine has not closed yet (None without turbines): every step before it
        is closed, for the whole fleet, and will not be emitted again."""
        first = int(self._bins.open_from.min(initial=NO_SAMPLE))
        return None if first == NO_SAMPLE else first

    def newest_ns(self) -> int:
        """The newest stamp the fleet holds, over its open bins' samples and its closed steps' ends (0 when it
        holds none): a lower bound of the time at which its state was taken."""
        closed = int(self._rings.last_end[: len(self._names)].max(initial=0))
        return max(closed, self._bins.newest_ns() or 0)

    def take_held(self) -> dict[str, int]:
        """Per report-by-exception channel, the steps given a held value since the last call (or state load)."""
        self._process()
        held = self._bins.held
        taken = dict(zip(self.spec.hold_s, held.tolist()))
        held[:] = 0
        return taken

    def open_stamp(self, turbine: str) -> int:
        """The turbine's newest stamp in its open bins, or the first stamp its open bins take (just after its last
        closed step's end) when that is later; `NO_STAMP` for a turbine unknown or without a sample yet."""
        slot = self._turbines.get(turbine)
        if slot is None or self._bins.open_from[slot] == NO_SAMPLE:
            return NO_STAMP
        first = int(self._bins.open_from[slot]) - self._plan.dt_ns + 1
        return max(first, self._bins.newest_ns(slot) or first)

    def close_turbine_until(self, turbine: str, now_ns: int) -> None:
        """Close one turbine's bins whose end + grace <= now_ns (replay ends each turbine at its last sample)."""
        self._queue(self._bins.close_until(now_ns, self._arrivals, self._turbines[turbine]))

    def _queue(self, closed: ClosedBins | None) -> None:
        """Queue closed bins for `_process`."""
        if closed is not None:
            self._closed.append(closed)
            self.bins_closed += int(closed.n_bins.sum())

    def _process(self) -> None:
        """Closed bins -> model-input rows -> ring buffers and Steps, a round of distinct turbines at a time."""
        raw, self._closed = self._closed, []
        if not raw:
            return
        values = aggregate_bins(raw, self._plan, self._bins.carry)  # every closed bin of the fleet at once
        slots, ends = closed_slots_ends(raw, self._plan.dt_ns)
        closers = np.concatenate([r.closers for r in raw])
        names = [self._names[s] for s in slots.tolist()]
        steps: list[Step | None] = [None] * slots.size
        LF = self.L * self.spec.n_features
        rings = self._rings
        chain = Chain(slots)
        rows = self._pre.step_many(slots, values, chain)  # every closed bin at once (each turbine's in time order)
        missing = missing_now(rows.M_miss).tolist()
        for idx in chain.rounds():  # each turbine's r-th bin: the rings and the steps
            sl = slots[idx]
            rings.push(sl, ends[idx], rows.X[idx], rows.M_miss[idx], rows.Flags[idx])
            n = rings.n[sl]
            ready = n >= self.L
            present = np.where(ready, rings.present[sl] / LF if LF else 1.0, np.nan).tolist()
            for k, (b, slot, n_k, ready_k) in enumerate(zip(idx.tolist(), sl.tolist(), n.tolist(), ready.tolist())):
                window = rings.window(slot) if ready_k and self.windows else None
                own = Window(rows.X[b], rows.M_miss[b], rows.Flags[b])
                steps[b] = Step(names[b], slot, int(ends[b]), n_k, missing[b], window, rows.Repeat[b], own,
                                present[k])  # fmt: skip
        if (closers[1:] < closers[:-1]).any():  # bins queued by turbine (`add_many`, a round): closing order
            steps = [steps[i] for i in np.argsort(closers, kind="stable")]
        self._pending.extend(steps)  # type: ignore[arg-type]

    def window_of(self, turbine: str) -> tuple[Window, int, int]:
        """(the turbine's last min(n_steps, L) rows, oldest first, as a Window; n_steps; end of its last step)."""
        self._process()
        slot = self._turbines[turbine]
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
                    "accumulator": self._bins.state_dict(slot),
                    "preprocessor": self._pre.state_dict(slot),
                    "X": self._rings.X[slot].copy(),
                    "M": self._rings.M[slot].copy(),
                    "Flags": self._rings.Flags[slot].copy(),
                    "n_steps": int(self._rings.n[slot]),
                    "last_end": int(self._rings.last_end[slot]),
                }
                for name, slot in self._turbines.items()
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
        self._turbines, self._names, self._pending, self._closed = {}, [], [], []
        self._bins = OpenBins(self.spec, self.grace_seconds, self.max_per_stamp)
        self._pre = StreamPreprocessor(self.spec, self.scaler, slots=0)
        rings = self._rings = _Rings(self.L, self.spec.n_features, self.spec.n_flags)
        for d in state["turbines"]:
            slot = self._new(str(d["name"]))
            self._bins.load_state(slot, self._bins.checked_state(d["accumulator"]))
            self._pre.load_state_dict(d["preprocessor"], slot)
            arrays = {}
            for key in ("X", "M", "Flags"):
                like = getattr(rings, key)[slot]
                arrays[key] = np.asarray(d[key], dtype=like.dtype)
                if arrays[key].shape != like.shape:
                    raise ValueError(f"Fleet.load_state_dict: {key} of {d['name']!r} has shape {arrays[key].shape}")
            rings.load(slot, arrays["X"], arrays["M"], arrays["Flags"], int(d["n_steps"]), int(d["last_end"]))
        self.bins_closed = int(state["bins_closed"])
