"""Fleet-relative scores: each turbine's score minus the median score of the other turbines at the same step.

Weather, icing and grid events reach every turbine of a farm at once; a fault reaches one. Subtracting the
fleet's same-step median removes what the turbines share, so a threshold fitted in autumn still holds in a winter
storm. Only scores of the same step enter the baseline, so the result at time t uses no data after t.

Contract
--------
* `median_of_others(S)`: S (n, T) float, NaN where turbine j has no score at step i. Returns (n, T): the median
  of the other finite entries of row i, NaN where S is NaN or the row has fewer than 2 finite entries.
  Vectorised: one sort per call, O(n T log T).
* `median_of_all(S)`: the same shape; the median of every finite entry of row i, the entry itself included, NaN
  where S is NaN. One turbine whose value runs away moves the others' leave-one-out median by half its excess when
  a row has three entries (the median of two is their mean); a median that includes the turbine itself stays
  between the healthy turbines' values (per-signal `baseline: fleet_all`).
* `fleet_relative(scores, steps, eligible, min_peers)`: the same for a flat list of windows keyed by step (window
  end, ns). A window gets `score - median(eligible others)` when it is eligible and has at least `min_peers`
  eligible peers at its step, else NaN. Also returns the number of eligible peers of each window.
* Eligible: a window whose present fraction reaches the window index's `min_present_fraction`, the rule that
  decides which windows scada-prepare indexes. The edge scores every window after warm-up, so without the same
  rule its peer sets would differ from the offline ones.
This is the one implementation: calibration at export, `scada-infer`/`scada-evaluate` and the edge engine call it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fleet_relative", "median_of_all", "median_of_others"]


def median_of_others(S: np.ndarray) -> np.ndarray:
    """(n, T) with NaN for absent -> (n, T) median of the other present entries of each row (NaN if none)."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        raise ValueError(f"median_of_others: expected (steps, turbines), got shape {S.shape}")
    n, T = S.shape
    order = np.argsort(S, axis=1, kind="stable")  # NaN last
    srt = np.take_along_axis(S, order, axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(T), (n, T)), axis=1)  # position of (i, j) in srt
    k = np.isfinite(S).sum(axis=1, keepdims=True) - 1  # (n, 1): number of others
    lo, hi = (k - 1) // 2, k // 2  # median positions among the others, sorted

    def at(pos: np.ndarray) -> np.ndarray:  # the others' pos-th value: skip the entry itself
        idx = np.where(pos < rank, pos, pos + 1)
        return np.take_along_axis(srt, np.clip(idx, 0, T - 1), axis=1)

    base = 0.5 * (at(np.broadcast_to(lo, (n, T))) + at(np.broadcast_to(hi, (n, T))))
    return np.where(np.isfinite(S) & (k >= 1), base, np.nan)


def median_of_all(S: np.ndarray) -> np.ndarray:
    """(n, T) with NaN for absent -> (n, T) median of all present entries of each row, NaN where S is NaN."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        raise ValueError(f"median_of_all: expected (steps, turbines), got shape {S.shape}")
    srt = np.sort(S, axis=1)  # NaN last
    k = np.isfinite(S).sum(axis=1, keepdims=True)  # (n, 1)
    lo, hi = np.maximum(k - 1, 0) // 2, k // 2  # the median's positions among a row's sorted entries (< T)
    base = 0.5 * (np.take_along_axis(srt, lo, axis=1) + np.take_along_axis(srt, hi, axis=1))
    return np.where(np.isfinite(S), base, np.nan)


def fleet_relative(
    scores: np.ndarray, steps: np.ndarray, eligible: np.ndarray, min_peers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Windows (N,) -> (fleet-relative score (N,) float64 with NaN where undefined, eligible peers (N,) int64)."""
    scores = np.asarray(scores, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.int64)
    eligible = np.asarray(eligible, dtype=bool)
    if not scores.shape == steps.shape == eligible.shape or scores.ndim != 1:
        raise ValueError(
            f"fleet_relative: scores {scores.shape}, steps {steps.shape} and eligible "
            f"{eligible.shape} must be equal 1-D shapes"
        )
    if isinstance(min_peers, bool) or not isinstance(min_peers, (int, np.integer)) or min_peers < 1:
        raise ValueError(f"fleet_relative: min_peers must be an integer >= 1, got {min_peers!r}")
    if not np.isfinite(scores[eligible]).all():
        raise ValueError("fleet_relative: eligible scores must be finite")
    if scores.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    row, inv = np.unique(steps, return_inverse=True)
    # column = rank of the window within its step, so each step's windows fill one row
    order = np.argsort(inv, kind="stable")
    start = np.searchsorted(inv[order], np.arange(len(row)))
    col = np.empty(len(inv), dtype=np.int64)
    col[order] = np.arange(len(inv)) - start[inv[order]]
    S = np.full((len(row), int(col.max()) + 1), np.nan)
    S[inv[eligible], col[eligible]] = scores[eligible]
    peers = np.isfinite(S).sum(axis=1)[inv] - eligible.astype(np.int64)
    base = median_of_others(S)[inv, col]
    rel = np.where(eligible & (peers >= min_peers), scores - base, np.nan)
    return rel, peers
