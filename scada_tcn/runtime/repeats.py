"""Exact repeats of raw channels from one step to the next: the evidence of the stuck-signal check.

A live sensor's 10-minute mean almost never repeats to the last digit (La Haute Borne: the gearbox temperatures
repeat on about 1 % of steps, never more than 25 steps in a row), while a frozen sensor or a seized actuator repeats
for as long as the fault lasts. `repeat_codes` turns binned values (before the winsor caps, which would make
different readings equal) into one code per step and channel:

    SAME (1)     present now and at the previous step, and equal;
    CHANGED (0)  present at both steps, and different;
    UNKNOWN (2)  missing now or at the previous step (a missing step neither extends nor breaks a run).

Batch (`repeat_codes(values)`) and stream (`codes_against(rows, previous rows)`, a fleet's turbines at once) are
the same comparison: the stream keeps each turbine's previous row as state. What the codes become (a run of
repeats counted only while the model expects the signal to move) is `runtime.aggregators.StuckRun`.

>>> repeat_codes(np.array([[1.0], [1.0], [np.nan], [1.0], [2.0]]))[:, 0].tolist()
[2, 1, 2, 2, 0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHANGED", "SAME", "UNKNOWN", "codes_against", "repeat_codes"]

CHANGED, SAME, UNKNOWN = 0, 1, 2


def repeat_codes(values: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """(T, S) float values (NaN = missing) -> (T, S) uint8 codes; `prev` (S,) is the row before the first one
    (None or NaN: unknown)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"repeat_codes: values must be (T, S), got {v.shape}")
    first = np.full((1, v.shape[1]), np.nan) if prev is None else np.asarray(prev, dtype=np.float64)[None, :]
    if first.shape[1] != v.shape[1]:
        raise ValueError(f"repeat_codes: prev must be ({v.shape[1]},), got {first.shape[1:]}")
    return codes_against(v, np.concatenate([first, v[:-1]], axis=0))


def codes_against(now: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Elementwise codes of `now` against `before` (same shape): row b of a fleet step against its own previous row."""
    now, before = np.asarray(now, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if now.shape != before.shape:
        raise ValueError(f"codes_against: shapes differ, {now.shape} vs {before.shape}")
    known = np.isfinite(now) & np.isfinite(before)
    return np.where(known, np.where(now == before, SAME, CHANGED), UNKNOWN).astype(np.uint8)
