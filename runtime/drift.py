"""Score drift at the edge: KS distance between the last `window` scores and a stored reference distribution.

Contract
--------
The reference is a quantile table: `levels` p_0 < ... < p_{Q-1} in [0, 1] (Q >= 2) and `values`
q_0 <= ... <= q_{Q-1}, finite (e.g. `DriftReference` quantiles from the trainer). Its CDF G is

* 0 below q_0 and 1 from q_{Q-1} on,
* piecewise linear between consecutive stored quantiles (p_j at q_j),
* right-continuous: a repeated quantile value is an atom (a jump); the mass below p_0 and above p_{Q-1} sits on
  the end quantiles (with p_0 = 0 and p_{Q-1} = 1, the sample min and max, nothing is moved).

`ks_to_quantiles(x, levels, values)` is sup_x |F_n(x) - G(x)| for the empirical CDF F_n of `x`, exact for that G
(both one-sided limits are checked at every sample value, so ties and atoms are handled). It is NaN for an
empty `x`. `ScoreDriftMonitor` is its incremental adapter: `update(score)` is O(1) into a ring buffer of the
last `window` scores and `get()` sorts the buffer, O(window log window). Non-finite scores are refused
(DriftError, a ValueError). One monitor follows one stream; fleet-wide or per-turbine use is the caller's choice.

>>> m = ScoreDriftMonitor([0.0, 1.0], [0.0, 1.0], window=4)  # reference: uniform on [0, 1]
>>> for s in (0.1, 0.2, 0.3, 0.4):
...     m.update(s)
>>> m.get()
{'ks': 0.6, 'n': 4}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["DriftError", "ScoreDriftMonitor", "check_quantile_table", "ks_to_quantiles"]


class DriftError(ValueError):
    """A drift reference or input breaks its contract (shapes, order, non-finite values)."""


def check_quantile_table(levels: Any, values: Any, what: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of a quantile table (see the module docstring), or DriftError naming `what`."""
    p = np.array(levels, dtype=np.float64)
    q = np.array(values, dtype=np.float64)
    problems = []
    if p.ndim != 1 or q.shape != p.shape or p.size < 2:
        problems.append(f"levels and values must be 1-D of one length >= 2, got {p.shape} and {q.shape}")
    elif not (np.isfinite(p).all() and np.isfinite(q).all()):
        problems.append("levels and values must be finite")
    else:
        if p[0] < 0 or p[-1] > 1 or (np.diff(p) <= 0).any():
            problems.append(f"levels must be strictly increasing in [0, 1], got {p.tolist()}")
        if (np.diff(q) < 0).any():
            problems.append("values must be non-decreasing (quantiles of one distribution)")
    if problems:
        raise DriftError(f"{what}: " + "; ".join(problems))
    return p, q


def _cdf(x: np.ndarray, p: np.ndarray, q: np.ndarray, left: bool) -> np.ndarray:
    """G(x) (right-continuous) or its left limit G(x-) for the quantile table (p, q)."""
    j = np.searchsorted(q, x, side="left" if left else "right")  # q[j-1] <(=) x <(=) q[j]
    inside = (j > 0) & (j < q.size)
    lo, hi = np.clip(j - 1, 0, q.size - 1), np.clip(j, 0, q.size - 1)
    span = np.where(inside, q[hi] - q[lo], 1.0)  # > 0 inside: q[lo] < q[hi] by the choice of side
    g = p[lo] + (p[hi] - p[lo]) * (x - q[lo]) / span
    return np.where(j == 0, 0.0, np.where(j == q.size, 1.0, g))


def ks_to_quantiles(x: Any, levels: Any, values: Any) -> float:
    """sup |F_n - G| between the empirical CDF of `x` and the quantile-table CDF; NaN when `x` is empty."""
    p, q = check_quantile_table(levels, values)
    xs = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if xs.size == 0:
        return float("nan")
    if not np.isfinite(xs).all():
        raise DriftError("ks_to_quantiles: x must be finite")
    v, first = np.unique(xs, return_index=True)
    f_left = first / xs.size  # F_n(v-)
    f_right = np.append(first[1:], xs.size) / xs.size  # F_n(v)
    d_right = np.abs(f_right - _cdf(v, p, q, left=False))
    d_left = np.abs(f_left - _cdf(v, p, q, left=True))
    return float(max(d_right.max(), d_left.max()))


class ScoreDriftMonitor:
    """KS distance between the last `window` scores and a reference quantile table; see the module docstring."""

    def __init__(self, reference_levels: Any, reference_values: Any, window: int) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise DriftError(f"ScoreDriftMonitor: window must be an integer >= 1, got {window!r}")
        self._p, self._q = check_quantile_table(reference_levels, reference_values, "ScoreDriftMonitor reference")
        self.reference_levels = self._p.tolist()
        self.reference_values = self._q.tolist()
        self.window = window
        self._buf = np.zeros(window, dtype=np.float64)
        self._pos = 0  # next slot to write
        self._n = 0

    def update(self, score: float) -> None:
        """Push one score (finite), dropping the oldest once `window` are held."""
        s = float(score)
        if not math.isfinite(s):
            raise DriftError(f"ScoreDriftMonitor.update: score must be finite, got {score!r}")
        self._buf[self._pos] = s
        self._pos = (self._pos + 1) % self.window
        self._n = min(self._n + 1, self.window)

    def _values(self) -> np.ndarray:
        """The held scores, oldest first (a copy)."""
        if self._n < self.window:
            return self._buf[: self._n].copy()
        return np.roll(self._buf, -self._pos)

    def get(self) -> dict[str, Any]:
        """{'ks': KS distance of the held scores to the reference (NaN when none), 'n': scores held}."""
        return {"ks": ks_to_quantiles(self._values(), self._p, self._q), "n": self._n}

    def state_dict(self) -> dict[str, Any]:
        """{'values': the held scores, oldest first} as a plain float64 array."""
        return {"values": self._values()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; refuses unknown keys, more than `window` values and non-finite values."""
        if not isinstance(state, dict) or set(state) != {"values"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise DriftError(f"ScoreDriftMonitor.load_state_dict: expected keys ['values'], got {got}")
        v = np.array(state["values"], dtype=np.float64)
        if v.ndim != 1 or v.size > self.window or not np.isfinite(v).all():
            raise DriftError(
                f"ScoreDriftMonitor.load_state_dict: values must be 1-D, finite and at most window={self.window} "
                f"long, got shape {v.shape}"
            )
        self._buf = np.zeros(self.window, dtype=np.float64)
        self._buf[: v.size] = v
        self._n = v.size
        self._pos = v.size % self.window
