"""The present-data rule of a window: how much of it must be measured for it to be scored at all.

A window's present fraction is its number of present inputs (M_miss == 1, an exact integer) over L * F. The
window index (`scada-prepare`) keeps, and the edge scores, only windows whose fraction reaches the
`min_present_fraction` the bundle records; both compute it with these functions, so a window on the boundary is
treated alike offline and at the edge. Below it the edge publishes an insufficient-data record, never a score.
A step's `missing_now` is the share of its own inputs missing: at 1 the turbine sent nothing for it, and its
window's score is no new evidence for the alert state machine (the edge and offline inference hold the alert).
"""

from __future__ import annotations

import numpy as np

__all__ = ["enough_present", "missing_now", "present_fraction", "sent_nothing", "sliding_present_fraction"]


def present_fraction(M_miss: np.ndarray) -> np.ndarray:
    """(..., L, F) 0/1 masks -> (...,) float64: present inputs over L * F."""
    M = np.asarray(M_miss)
    if M.ndim < 2:
        raise ValueError(f"present_fraction: M_miss must be (..., L, F), got shape {M.shape}")
    counts = np.count_nonzero(M > 0.5, axis=(-2, -1))
    return counts / float(M.shape[-2] * M.shape[-1])


def sliding_present_fraction(M_miss: np.ndarray, starts: np.ndarray, L: int) -> np.ndarray:
    """The present fraction of the windows [s, s + L) of one series (T, F), for each start s, in O(T)."""
    M = np.asarray(M_miss)
    if M.ndim != 2:
        raise ValueError(f"sliding_present_fraction: M_miss must be (T, F), got shape {M.shape}")
    c = np.concatenate([[0], np.cumsum(np.count_nonzero(M > 0.5, axis=1), dtype=np.int64)])
    s = np.asarray(starts, dtype=np.int64)
    return (c[s + L] - c[s]) / float(L * M.shape[1])


def enough_present(fraction: np.ndarray | float, min_fraction: float) -> np.ndarray:
    """True where a window has enough present data to be scored."""
    return np.asarray(fraction) >= min_fraction


def missing_now(M_step: np.ndarray) -> np.ndarray:
    """(..., F) 0/1 masks of one step -> (...,) float64: the share of its inputs missing (0 when F is 0)."""
    M = np.asarray(M_step)
    if M.ndim < 1:
        raise ValueError(f"missing_now: M_step must be (..., F), got shape {M.shape}")
    if M.shape[-1] == 0:
        return np.zeros(M.shape[:-1])
    return 1.0 - np.count_nonzero(M > 0.5, axis=-1) / float(M.shape[-1])


def sent_nothing(missing: np.ndarray | float) -> np.ndarray:
    """True where a step's `missing_now` is 1: the turbine sent nothing for it, so its window's score is no new
    evidence and the alert holds (the edge's engine and scada-infer's `apply_alerts`)."""
    return np.asarray(missing) >= 1.0
