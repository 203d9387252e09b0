"""The alert state machine (hysteresis + debounce), one object for the whole fleet, numpy inside.

Contract
--------
Per turbine slot, with thr the calibrated threshold of that step and the bundle's T_on >= T_off (multiples of
thr) and N_on, N_off >= 1 (consecutive steps):

* off: score >= T_on * thr -> on_count += 1, else on_count = 0; when on_count >= N_on the state turns on and
  off_count = 0.
* on:  score <= T_off * thr -> off_count += 1, else off_count = 0; when off_count >= N_off the state turns off
  and on_count = 0.

`step(slots, score, threshold)` advances the given slots by one model step each (slots must be distinct: feed
the steps of one turbine in separate calls, in time order) and returns the transitions. New slots start off;
the arrays grow as slots appear. Refused (ValueError): bad parameters, non-finite scores, thresholds <= 0,
duplicate or negative slots, shape mismatches. Caller arrays are never modified. `state_dict()` holds plain
numpy arrays; `load_state_dict` restores them. `hold(slots, on)` sets slots on or off, counts cleared (an alert
state carried over a restart that could not resume the engine's state, or taken from the engine that published
it).

>>> a = AlertState(T_on=1.0, T_off=0.8, N_on=2, N_off=1)
>>> [a.step([0], [s], [1.0]).turned_on.tolist() for s in (1.5, 1.5, 0.9)]
[[False], [True], [False]]
>>> a.get().tolist()
[True]
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from scada_tcn.runtime.slots import kept_rows

__all__ = ["AlertState", "AlertTransitions"]


class AlertTransitions(NamedTuple):
    """Per input slot (same order as `step`'s slots): the state after the step and whether it changed."""

    on: np.ndarray  # (B,) bool, state after this step
    turned_on: np.ndarray  # (B,) bool
    turned_off: np.ndarray  # (B,) bool


class AlertState:
    """Hysteresis + debounce alert states of a fleet of turbine slots; see the module docstring."""

    def __init__(self, T_on: float, T_off: float, N_on: int, N_off: int) -> None:
        problems = []
        for name, v in (("T_on", T_on), ("T_off", T_off)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                problems.append(f"{name} must be a finite number > 0, got {v!r}")
        for name, v in (("N_on", N_on), ("N_off", N_off)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1, got {v!r}")
        if not problems and T_off > T_on:
            problems.append(f"T_off={T_off} must be <= T_on={T_on} (hysteresis)")
        if problems:
            raise ValueError("AlertState: " + "; ".join(problems))
        self.T_on, self.T_off, self.N_on, self.N_off = float(T_on), float(T_off), int(N_on), int(N_off)
        self._on = np.zeros(0, dtype=bool)
        self._on_count = np.zeros(0, dtype=np.int64)
        self._off_count = np.zeros(0, dtype=np.int64)

    def _grow(self, n: int) -> None:
        extra = n - self._on.size
        if extra > 0:
            self._on = np.concatenate([self._on, np.zeros(extra, dtype=bool)])
            self._on_count = np.concatenate([self._on_count, np.zeros(extra, dtype=np.int64)])
            self._off_count = np.concatenate([self._off_count, np.zeros(extra, dtype=np.int64)])

    def step(self, slots: Any, score: Any, threshold: Any) -> AlertTransitions:
        """Advance `slots` (B,) int by one step with `score` (B,) and `threshold` (B,) -> transitions."""
        idx = np.asarray(slots)
        s = np.asarray(score, dtype=np.float64)
        thr = np.asarray(threshold, dtype=np.float64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or s.shape != idx.shape or thr.shape != idx.shape:
            raise ValueError(
                f"AlertState.step: slots (B,) int, score (B,), threshold (B,); got {idx.dtype} {idx.shape}, "
                f"{s.shape}, {thr.shape}"
            )
        if idx.size and (idx.min() < 0 or np.unique(idx).size != idx.size):
            raise ValueError("AlertState.step: slots must be distinct and >= 0; feed repeated turbines in later calls")
        if not np.isfinite(s).all() or not (np.isfinite(thr) & (thr > 0)).all():
            raise ValueError("AlertState.step: scores must be finite and thresholds finite and > 0")
        self._grow(int(idx.max()) + 1 if idx.size else 0)
        was_on = self._on[idx]
        on_count, off_count = self._on_count[idx], self._off_count[idx]
        above = s >= self.T_on * thr
        below = s <= self.T_off * thr
        on_count = np.where(~was_on, np.where(above, on_count + 1, 0), on_count)
        off_count = np.where(was_on, np.where(below, off_count + 1, 0), off_count)
        turned_on = ~was_on & (on_count >= self.N_on)
        turned_off = was_on & (off_count >= self.N_off)
        off_count = np.where(turned_on, 0, off_count)
        on_count = np.where(turned_off, 0, on_count)
        now_on = (was_on | turned_on) & ~turned_off
        self._on[idx], self._on_count[idx], self._off_count[idx] = now_on, on_count, off_count
        return AlertTransitions(now_on.copy(), turned_on, turned_off)

    def hold(self, slots: Any, on: Any) -> None:
        """Set `slots` to `on` (same shape, bool), counts cleared: the states consumers hold, taken from another
        engine (each changes by the rule above, once the slot is scored again)."""
        idx = np.asarray(slots, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and idx.min() < 0) or np.shape(on) != idx.shape:
            raise ValueError("AlertState.hold: slots must be a 1-D array of integers >= 0, `on` a bool per slot")
        self._grow(int(idx.max()) + 1 if idx.size else 0)
        self._on[idx], self._on_count[idx], self._off_count[idx] = np.asarray(on, dtype=bool), 0, 0

    @staticmethod
    def select_state(state: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
        """A `state_dict()` of the old slots `keep` only (increasing), renumbered from 0 (`runtime.slots`)."""
        return kept_rows(state, keep)

    def get(self) -> np.ndarray:
        """A copy of the current states (n_slots,) bool."""
        return self._on.copy()

    def state_dict(self) -> dict[str, Any]:
        """Plain copies: on (n,) bool, on_count (n,) int64, off_count (n,) int64."""
        return {"on": self._on.copy(), "on_count": self._on_count.copy(), "off_count": self._off_count.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`."""
        if not isinstance(state, dict) or set(state) != {"on", "on_count", "off_count"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"AlertState.load_state_dict: expected keys ['off_count', 'on', 'on_count'], got {got}")
        on = np.array(state["on"], dtype=bool)
        on_count = np.array(state["on_count"], dtype=np.int64)
        off_count = np.array(state["off_count"], dtype=np.int64)
        if on.ndim != 1 or on_count.shape != on.shape or off_count.shape != on.shape:
            raise ValueError(f"AlertState.load_state_dict: shapes {on.shape}, {on_count.shape}, {off_count.shape}")
        if (on_count < 0).any() or (off_count < 0).any():
            raise ValueError("AlertState.load_state_dict: counts must be >= 0")
        self._on, self._on_count, self._off_count = on, on_count, off_count
