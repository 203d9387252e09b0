"""Score drift at the edge: KS distance between the last `window` scores and a stored reference distribution.

Contract
--------
The reference is a quantile table: `levels` p_0 < ... < p_{Q-1} in [0, 1] (Q >= 2) and `values`
q_0 <= ... <= q_{Q-1}, finite (e.g. a `DriftReference` row, or the bundle's score quantiles). Its CDF G is

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scada_tcn.runtime.errors import check_keys

__all__ = [
    "DEFAULT_LEVELS",
    "DriftError",
    "DriftReference",
    "ScoreDriftMonitor",
    "check_quantile_table",
    "check_table",
    "ks_to_quantiles",
]


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
        self.pushed = 0  # scores pushed since construction: a caller recomputes `get()` only when it moved

    def update(self, score: float) -> None:
        """Push one score (finite), dropping the oldest once `window` are held."""
        s = float(score)
        if not math.isfinite(s):
            raise DriftError(f"ScoreDriftMonitor.update: score must be finite, got {score!r}")
        self._buf[self._pos] = s
        self._pos = (self._pos + 1) % self.window
        self._n = min(self._n + 1, self.window)
        self.pushed += 1

    def update_many(self, scores: Any) -> None:
        """Push a batch of scores in order: the same state as `update` on each, without a Python loop."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        if not np.isfinite(s).all():
            raise DriftError("ScoreDriftMonitor.update_many: scores must be finite")
        self.pushed += s.size
        s = s[-self.window :]  # older ones would be overwritten anyway
        idx = (self._pos + np.arange(s.size)) % self.window
        self._buf[idx] = s
        self._pos = (self._pos + s.size) % self.window
        self._n = min(self._n + s.size, self.window)

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
        self.pushed += v.size


DEFAULT_LEVELS = tuple(np.linspace(0.0, 1.0, 101).tolist())  # min, every percentile, max


def check_table(x: Any, mask: Any, F: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (rows, F) float64 values and bool mask (1 = present); present values must be finite."""
    X = np.asarray(x, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != F:
        raise DriftError(f"{name} must be (rows, F={F}) for {F} feature names, got {X.shape}")
    M = np.ones(X.shape, bool) if mask is None else np.asarray(mask) > 0.5
    if M.shape != X.shape:
        raise DriftError(f"mask of {name} must have its shape {X.shape}, got {M.shape}")
    if not np.isfinite(X[M]).all():
        raise DriftError(f"{name}: present values (mask 1) must be finite; mark missing values with the mask")
    return X, M


_REF_KEYS = ("feature_names", "levels", "quantiles", "mean", "std", "n")


@dataclass(frozen=True, eq=False)
class DriftReference:
    """Per-feature summary of a reference split: quantiles (F, Q) at `levels` (Q,), mean, std and present count (F,).

    A feature with no present value cannot be summarised and is refused by `fit` (drop it or fix the mask).
    """

    feature_names: tuple[str, ...]
    levels: np.ndarray  # (Q,)
    quantiles: np.ndarray  # (F, Q)
    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    n: np.ndarray  # (F,) int64

    def __post_init__(self) -> None:
        F = len(self.feature_names)
        if F == 0 or len(set(self.feature_names)) != F:
            raise DriftError(f"DriftReference: feature_names must be distinct and non-empty, got {self.feature_names}")
        levels = np.array(self.levels, dtype=np.float64)
        q = np.array(self.quantiles, dtype=np.float64)
        if q.shape != (F, levels.size):
            raise DriftError(f"DriftReference: quantiles must be (F={F}, Q={levels.size}), got {q.shape}")
        for name, row in zip(self.feature_names, q):
            check_quantile_table(levels, row, f"DriftReference feature {name!r}")
        fields: dict[str, Any] = {"feature_names": tuple(self.feature_names), "levels": levels, "quantiles": q}
        for key in ("mean", "std", "n"):
            v = np.array(getattr(self, key), dtype=np.int64 if key == "n" else np.float64)
            if v.shape != (F,) or not np.isfinite(v).all():
                raise DriftError(f"DriftReference: {key} must be finite with shape ({F},), got {v.shape}")
            fields[key] = v
        if (fields["std"] < 0).any() or (fields["n"] < 1).any():
            raise DriftError("DriftReference: std must be >= 0 and n >= 1")
        for key, v in fields.items():
            object.__setattr__(self, key, v)

    @classmethod
    def fit(
        cls, x: Any, feature_names: Sequence[str], mask: Any = None, levels: Sequence[float] = DEFAULT_LEVELS
    ) -> DriftReference:
        """Summarise x (n, F) on its present values (mask 1 = present)."""
        names = tuple(feature_names)
        X, M = check_table(x, mask, len(names), "DriftReference.fit: x")
        n = M.sum(axis=0)
        if (n == 0).any():
            empty = [nm for nm, k in zip(names, n) if k == 0]
            raise DriftError(f"DriftReference.fit: features without any present value: {empty}")
        # levels only (against a dummy table); the fitted quantiles are checked on construction
        p, _ = check_quantile_table(levels, np.zeros(len(levels)), "DriftReference.fit levels")
        Xn = np.where(M, X, np.nan)
        return cls(
            feature_names=names,
            levels=p,
            quantiles=np.nanquantile(Xn, p, axis=0).T,
            mean=np.nanmean(Xn, axis=0),
            std=np.nanstd(Xn, axis=0),
            n=n.astype(np.int64),
        )

    def ks(self, x: Any, mask: Any = None) -> dict[str, float]:
        """Per feature, the KS distance of the present values of x (m, F) to this reference's quantile CDF."""
        X, M = check_table(x, mask, len(self.feature_names), "DriftReference.ks: x")
        return {
            name: ks_to_quantiles(X[M[:, f], f], self.levels, self.quantiles[f])
            for f, name in enumerate(self.feature_names)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON types only."""
        return {
            "feature_names": list(self.feature_names),
            "levels": self.levels.tolist(),
            "quantiles": self.quantiles.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "n": self.n.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftReference:
        """Inverse of `to_dict`; refuses unknown or missing keys and any invalid field."""
        check_keys(d, _REF_KEYS, "DriftReference.from_dict", DriftError)
        names = d["feature_names"]
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            raise DriftError("DriftReference.from_dict: feature_names must be a list of strings")
        n = np.asarray(d["n"])
        if n.dtype.kind not in "iu":
            raise DriftError(f"DriftReference.from_dict: n must hold integers, got {n.dtype}")
        try:
            arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("levels", "quantiles", "mean", "std")}
        except (TypeError, ValueError) as e:
            raise DriftError(f"DriftReference.from_dict: non-numeric or ragged field ({e})") from None
        return cls(feature_names=tuple(names), n=n, **arrays)
