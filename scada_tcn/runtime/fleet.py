"""Per-turbine streaming state of a fleet: binning -> model-input rows -> a ring buffer of the last L steps.

Contract
--------
* `Fleet.add(turbine, ts_ns, values (C,))` stores one validated sample (see `runtime.telemetry`); bins of that
  turbine close when a sample of a later bin arrives (`BinAccumulator.add`). `Fleet.close_until(now_ns)` closes
  every bin whose end + grace has passed on the wall clock, empty ones included (gaps become missing values).
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
  `window_of(turbine)` copies a turbine's current window out of the ring (the streaming engine's restart).
* Turbines get slots 0, 1, ... in order of first sample; at most `max_turbines` (ValueError beyond: the caller
  checks `has_room` first). `state_dict()` / `load_state_dict()` carry plain data per turbine.
Caller arrays are never modified.
"""

from __future__ import annotations

from collections.abc import KeysView
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.binning import BinAccumulator, RawBins, aggregate_bins
from scada_tcn.runtime.pipeline import StreamPreprocessor
from scada_tcn.runtime.scaling import RobustScaler
from scada_tcn.runtime.spec import PipelineSpec

__all__ = ["Fleet", "Step", "Window"]


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
        return not np.isnan(self.present)


@dataclass
class _Turbine:
    slot: int
    acc: BinAccumulator
    X: np.ndarray  # (L, F) ring, row (n_steps - 1) % L is the latest
    M: np.ndarray
    Flags: np.ndarray
    n_steps: int = 0
    present: int = 0  # present elements in the ring
    last_end: int = 0  # end of the latest closed step, ns


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
        self._probe = BinAccumulator(spec, grace_seconds)  # validates grace and binning once; the fleet's clock
        self._plan = self._probe.plan
        self._turbines: dict[str, _Turbine] = {}
        self._pre = StreamPreprocessor(spec, scaler, slots=0)  # one slot per turbine
        self._closed: list[tuple[str, _Turbine, RawBins]] = []  # closed bins not aggregated yet, closing order
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

    def _new(self, turbine: str) -> _Turbine:
        if len(self._turbines) >= self.max_turbines:
            raise ValueError(f"Fleet: already {self.max_turbines} turbines (ingest.max_turbines); {turbine!r} refused")
        F, R = self.spec.n_features, self.spec.n_flags
        t = _Turbine(
            slot=self._pre.add_slot(),
            acc=BinAccumulator(self.spec, self.grace_seconds),
            X=np.zeros((self.L, F), dtype=np.float32),
            M=np.zeros((self.L, F), dtype=np.uint8),
            Flags=np.zeros((self.L, R), dtype=np.float32),
        )
        self._turbines[turbine] = t
        return t

    def add(self, turbine: str, ts_ns: int, values: np.ndarray) -> bool:
        """Store one sample; returns False when it was late (its bin had closed) and was dropped."""
        t = self._turbines.get(turbine) or self._new(turbine)
        late_before = t.acc.late_dropped
        self._emit(turbine, t, t.acc.add_deferred(ts_ns, values))
        return t.acc.late_dropped == late_before

    def close_until(self, now_ns: int) -> None:
        """Close, for every turbine, the bins whose end + grace <= now_ns."""
        last = self._probe.closable_through(now_ns)  # the same for every turbine
        for name, t in self._turbines.items():
            if t.acc.open_from is not None and t.acc.open_from <= last:  # (most ticks close nothing)
                self._emit(name, t, t.acc.close_until_deferred(now_ns))

    def open_from(self) -> int | None:
        """The earliest bin end that some turbine has not closed yet (None without turbines): every step before it
        is closed, for the whole fleet, and will not be emitted again."""
        ends = [t.acc.open_from for t in self._turbines.values() if t.acc.open_from is not None]
        return min(ends) if ends else None

    def close_turbine_until(self, turbine: str, now_ns: int) -> None:
        """Close one turbine's bins whose end + grace <= now_ns (replay ends each turbine at its last sample)."""
        t = self._turbines[turbine]
        self._emit(turbine, t, t.acc.close_until_deferred(now_ns))

    def _emit(self, name: str, t: _Turbine, raw: RawBins | None) -> None:
        if raw is not None:
            self._closed.append((name, t, raw))
            self.bins_closed += raw.n_bins

    def _process(self) -> None:
        """Closed bins -> model-input rows -> ring buffers and Steps, a round of distinct turbines at a time."""
        raw, self._closed = self._closed, []
        if not raw:
            return
        values = aggregate_bins([r for _, _, r in raw], self._plan)  # every closed bin of the fleet at once
        dt = self._plan.dt_ns
        closed = [(name, t, r.start_ns + i * dt) for name, t, r in raw for i in range(r.n_bins)]
        slots = np.array([t.slot for _, t, _ in closed], dtype=np.int64)
        order = np.argsort(slots, kind="stable")  # a turbine's bins stay in time order
        starts = np.flatnonzero(np.r_[True, slots[order][1:] != slots[order][:-1]])
        rank = np.empty(slots.size, dtype=np.int64)
        rank[order] = np.arange(slots.size) - np.repeat(starts, np.diff(np.r_[starts, slots.size]))
        steps: list[Step | None] = [None] * len(closed)
        LF = self.L * self.spec.n_features
        for r in range(int(rank.max()) + 1):
            idx = np.flatnonzero(rank == r)
            rows = self._pre.step_many(slots[idx], values[idx])
            n_present = rows.M_miss.sum(axis=1, dtype=np.int64)
            missing_now = 1.0 - rows.M_miss.mean(axis=1) if rows.M_miss.shape[1] else np.zeros(idx.size)
            for k, b in enumerate(idx):
                name, t, end_ns = closed[b]
                i = t.n_steps % self.L
                t.present += int(n_present[k]) - int(t.M[i].sum())
                t.X[i], t.M[i], t.Flags[i] = rows.X[k], rows.M_miss[k], rows.Flags[k]
                t.n_steps += 1
                t.last_end = end_ns
                ready = t.n_steps >= self.L
                window = self._window(t) if ready and self.windows else None
                present = t.present / LF if ready and LF else (1.0 if ready else float("nan"))
                own = Window(rows.X[k], rows.M_miss[k], rows.Flags[k])
                steps[b] = Step(name, t.slot, t.last_end, t.n_steps, float(missing_now[k]), window, rows.Repeat[k],
                                own, present)  # fmt: skip
        self._pending.extend(steps)  # type: ignore[arg-type]

    def _window(self, t: _Turbine) -> Window:
        order = (np.arange(self.L) + t.n_steps) % self.L  # oldest first
        return Window(t.X[order], t.M[order], t.Flags[order])

    def window_of(self, turbine: str) -> tuple[Window, int, int]:
        """(the turbine's last min(n_steps, L) rows, oldest first, as a Window; n_steps; end of its last step)."""
        self._process()
        t = self._turbines[turbine]
        w = self._window(t)
        k = min(t.n_steps, self.L)
        return Window(w.X[self.L - k :], w.M_miss[self.L - k :], w.Flags[self.L - k :]), t.n_steps, t.last_end

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
                    "X": t.X.copy(),
                    "M": t.M.copy(),
                    "Flags": t.Flags.copy(),
                    "n_steps": t.n_steps,
                    "last_end": t.last_end,
                }
                for name, t in self._turbines.items()
            ],
            "bins_closed": self.bins_closed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` from a Fleet with the same spec, scaler and L (pending steps are not kept)."""
        if not isinstance(state, dict) or set(state) != {"turbines", "bins_closed"}:
            raise ValueError("Fleet.load_state_dict: expected keys ['bins_closed', 'turbines']")
        self._turbines, self._pending, self._closed = {}, [], []
        self._pre = StreamPreprocessor(self.spec, self.scaler, slots=0)
        for d in state["turbines"]:
            t = self._new(str(d["name"]))
            t.acc.load_state_dict(d["accumulator"])
            self._pre.load_state_dict(d["preprocessor"], t.slot)
            for key in ("X", "M", "Flags"):
                arr = np.asarray(d[key], dtype=getattr(t, key).dtype)
                if arr.shape != getattr(t, key).shape:
                    raise ValueError(f"Fleet.load_state_dict: {key} of {d['name']!r} has shape {arr.shape}")
                setattr(t, key, arr.copy())
            t.n_steps = int(d["n_steps"])
            t.last_end = int(d["last_end"])
            t.present = int(t.M.sum())
        self.bins_closed = int(state["bins_closed"])
