"""Temporal aggregation of per-signal evidence: one small stateful object per kind, a fleet of slots inside.

Each object holds, for every (turbine slot, column), the aggregate of that column's evidence over the turbine's
steps, and is used identically offline (`scada-infer`, calibration at export) and in the daemon.

* `Ewma(width, halflife)`: a time-decayed mean. Every step decays the evidence by a = 0.5 ** (1 / halflife);
  a step with a deviation y adds it: S <- a S + (1 - a) y, W <- a W + (1 - a). The value is S / W, the weighted
  mean of the recent observed deviations, defined while W >= `min_weight` (so after a gap of several half-lives
  the group has no value until it is observed again). A missing step only decays. `halflife` is one number, or
  one per column (a slow drift's column may remember longer than a sudden fault's).
* `Cusum(width, k, max_gap)`: a one-sided cumulative sum, S <- max(0, S + y - k) on an observed step. A
  missing step leaves S as it was; after `max_gap` consecutive missing steps S restarts at 0 (old evidence must
  not meet new data across a long outage). The value is S.
* `StuckRun(min_move)`: the stuck-signal check of each column. It takes a raw channel's repeat codes
  (`runtime.repeats`) and the prediction of the signal: a repeat (SAME) on a step where the prediction moved by
  more than `min_move` since the previous step adds 1 to the run; a change (CHANGED) ends it (0); a repeat while
  the prediction stayed still, an unknown code or a step without a prediction leaves it as it was. The value is
  the run. A live sensor changes whenever its signal is expected to move, so its runs stay short.

Contract (river style): parameters in the constructor, checked there; `update(slots, y, present)` advances the
given slots (distinct, one step each) with y (B, G) float and present (B, G) bool (absent groups: a missing
step) and returns nothing; `get(slots)` reads (B, G) values (NaN where undefined); `state_dict()` /
`load_state_dict()` carry plain arrays. Slots appear as they are used. Caller arrays are never modified.

>>> e = Ewma(width=1, halflife=1.0)
>>> e.update([0], [[2.0]], [[True]]); e.update([0], [[0.0]], [[True]])
>>> round(float(e.get([0])[0, 0]), 3)
0.667
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from scada_tcn.runtime.vocab import ScoreAggregator, allowed

__all__ = ["Cusum", "Ewma", "StuckRun", "make_aggregator"]


def _check_step(slots: Any, y: Any, present: Any, width: int, who: str) -> tuple[np.ndarray, ...]:
    idx = np.asarray(slots)
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(present, dtype=bool)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or y.shape != (idx.size, width) or p.shape != y.shape:
        raise ValueError(f"{who}.update: slots (B,) int, y and present (B, {width}); got {idx.shape} "
                         f"{idx.dtype}, {y.shape}, {p.shape}")  # fmt: skip
    if idx.size and (idx.min() < 0 or np.unique(idx).size != idx.size):
        raise ValueError(f"{who}.update: slots must be distinct and >= 0; feed repeated turbines in later calls")
    if not np.isfinite(y[p]).all():
        raise ValueError(f"{who}.update: present deviations must be finite")
    return idx, y, p


class _Slots:
    """Per-slot arrays that grow as slots appear."""

    def __init__(self, width: int, fields: dict[str, float]) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        self.width = width
        self._fields = dict(fields)
        self._arrays = {k: np.zeros((0, width)) for k in fields}

    def grow(self, n: int) -> None:
        have = next(iter(self._arrays.values())).shape[0]
        if n > have:
            for k, fill in self._fields.items():
                extra = np.full((n - have, self.width), fill)
                self._arrays[k] = np.concatenate([self._arrays[k], extra])

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._arrays.items()}

    def load(self, state: dict[str, Any], who: str) -> None:
        if not isinstance(state, dict) or set(state) != set(self._fields):
            raise ValueError(f"{who}.load_state_dict: expected keys {sorted(self._fields)}")
        arrays = {k: np.array(state[k], dtype=np.float64) for k in self._fields}
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != self.width:
            raise ValueError(f"{who}.load_state_dict: arrays must be (n_slots, {self.width}), got {shapes}")
        self._arrays = arrays


class _Aggregator:
    """What the aggregators share: per-slot state arrays (`_Slots`), grown on demand, saved and restored; `get`
    returns the state array named `_value` unless the aggregator computes its value."""

    _s: _Slots
    _value = ""

    def _grown(self, slots: Any) -> np.ndarray:
        idx = np.asarray(slots, dtype=np.int64)
        self._s.grow(int(idx.max()) + 1 if idx.size else 0)
        return idx

    def get(self, slots: Any) -> np.ndarray:
        return self._s._arrays[self._value][self._grown(slots)].copy()

    def state_dict(self) -> dict[str, Any]:
        return self._s.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._s.load(state, type(self).__name__)


class Ewma(_Aggregator):
    """Time-decayed mean of each group's deviation; see the module docstring."""

    def __init__(self, width: int, halflife: float | Sequence[float], min_weight: float = 0.25) -> None:
        one = not isinstance(halflife, (list, tuple, np.ndarray))
        h = np.asarray([halflife] if one else halflife)
        if h.dtype.kind not in "iuf" or h.shape != ((1,) if one else (width,)) or not (np.isfinite(h) & (h > 0)).all():
            raise ValueError(f"Ewma: halflife must be a finite number of steps > 0, or {width} of them (one per "
                             f"column), got {halflife!r}")  # fmt: skip
        if not 0 < min_weight < 1:
            raise ValueError(f"Ewma: min_weight must be in (0, 1), got {min_weight!r}")
        self.width, self.min_weight = width, float(min_weight)
        self.halflife: float | tuple[float, ...] = float(h[0]) if one else tuple(float(x) for x in h)
        self._decay = 0.5 ** (1.0 / self.halflife) if one else 0.5 ** (1.0 / h.astype(np.float64))
        self._s = _Slots(width, {"S": 0.0, "W": 0.0})

    def update(self, slots: Any, y: Any, present: Any) -> None:
        idx, y, p = _check_step(slots, y, present, self.width, "Ewma")
        self._grown(idx)
        S, W = self._s._arrays["S"], self._s._arrays["W"]
        a = self._decay
        S[idx] = a * S[idx] + np.where(p, (1 - a) * np.where(p, y, 0.0), 0.0)
        W[idx] = a * W[idx] + np.where(p, 1 - a, 0.0)

    def get(self, slots: Any) -> np.ndarray:
        idx = self._grown(slots)
        S, W = self._s._arrays["S"][idx], self._s._arrays["W"][idx]
        ok = W >= self.min_weight
        return np.where(ok, S / np.where(ok, W, 1.0), np.nan)


class Cusum(_Aggregator):
    """One-sided cumulative sum of each group's deviation above an allowance k; see the module docstring."""

    _value = "S"

    def __init__(self, width: int, k: float, max_gap: int) -> None:
        if not (isinstance(k, (int, float)) and math.isfinite(k) and k >= 0):
            raise ValueError(f"Cusum: k must be a finite number >= 0, got {k!r}")
        if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 1:
            raise ValueError(f"Cusum: max_gap must be an integer >= 1 (steps), got {max_gap!r}")
        self.width, self.k, self.max_gap = width, float(k), int(max_gap)
        self._s = _Slots(width, {"S": 0.0, "gap": 0.0})

    def update(self, slots: Any, y: Any, present: Any) -> None:
        idx, y, p = _check_step(slots, y, present, self.width, "Cusum")
        self._grown(idx)
        S, gap = self._s._arrays["S"], self._s._arrays["gap"]
        g = np.where(p, 0.0, gap[idx] + 1)
        s = np.where(p, np.maximum(0.0, S[idx] + np.where(p, y, 0.0) - self.k), S[idx])
        S[idx] = np.where(g > self.max_gap, 0.0, s)
        gap[idx] = g


class StuckRun(_Aggregator):
    """Runs of exact repeats while the signal is expected to move; see the module docstring."""

    _value = "run"

    def __init__(self, min_move: Any) -> None:
        m = np.asarray(min_move, dtype=np.float64)
        if m.ndim != 1 or m.size < 1 or not (np.isfinite(m) & (m >= 0)).all():
            raise ValueError(f"StuckRun: min_move must be a non-empty list of finite numbers >= 0, got {min_move!r}")
        self.width, self.min_move = int(m.size), m
        self._s = _Slots(self.width, {"run": 0.0, "prev": np.nan})

    def update(self, slots: Any, codes: Any, pred: Any, has_pred: Any) -> None:
        """codes (B, S) uint8 repeat codes, pred (B, S) the signal's prediction, has_pred (B, S) bool."""
        from scada_tcn.runtime.repeats import CHANGED, SAME

        idx, pred, ok = _check_step(slots, pred, has_pred, self.width, "StuckRun")
        c = np.asarray(codes)
        if c.shape != pred.shape:
            raise ValueError(f"StuckRun.update: codes must be {pred.shape}, got {c.shape}")
        self._grown(idx)
        run, prev = self._s._arrays["run"], self._s._arrays["prev"]
        moved = ok & np.isfinite(prev[idx]) & (np.abs(np.where(ok, pred, 0.0) - prev[idx]) > self.min_move)
        run[idx] = np.where(c == CHANGED, 0.0, np.where((c == SAME) & moved, run[idx] + 1.0, run[idx]))
        prev[idx] = np.where(ok, pred, np.nan)


def make_aggregator(
    kind: ScoreAggregator, width: int, halflife: float | Sequence[float] | None, k: float | None, max_gap: int
) -> Ewma | Cusum:
    """The aggregator a bundle names (`halflife`: one, or one per column)."""
    if kind == ScoreAggregator.ewma and halflife is not None:
        return Ewma(width, halflife)
    if kind == ScoreAggregator.cusum and k is not None:
        return Cusum(width, k, max_gap)
    raise ValueError(f"make_aggregator: {kind!r} with halflife={halflife}, k={k}; allowed {allowed(ScoreAggregator)}")
