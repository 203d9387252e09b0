"""Offline data drift (numpy): two-sample distances, per-feature drift and a JSON-sized drift reference.

Contract
--------
* `ks_statistic(a, b)`: sup_x |F_a(x) - F_b(x)| of the two empirical CDFs, evaluated at every pooled value, so
  exact with ties. `wasserstein_1d(a, b)`: the integral of |F_a - F_b| over the pooled sorted values, exact.
  Both are NaN when either sample is empty and refuse non-finite values (DriftError, a ValueError).
* `mmd2_unbiased(X, Y, bandwidth)`: the unbiased U-statistic estimate of the squared MMD with the Gaussian
  kernel k(x, y) = exp(-|x - y|^2 / (2 bandwidth^2)); it can be slightly negative when there is no drift. For
  cost, X and Y are first subsampled without replacement to at most `max_rows` rows each with
  `default_rng(seed)` (deterministic). `bandwidth=None` takes the median heuristic on that pooled subsample
  (`median_bandwidth`). NaN when either side has fewer than 2 rows or the median distance is 0.
* `feature_drift(ref, cur, names)`: per feature, KS and Wasserstein on the present values only (mask 1 =
  present, values under mask 0 are never read); a feature drifted when its KS exceeds `ks_threshold`. A feature
  with no present value on a side gets NaN and is not reported as drifted.
* `DriftReference` (in `runtime.drift`, because the bundle carries one): per-feature quantiles of a reference
  split, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scada_tcn.runtime.drift import DEFAULT_LEVELS, DriftError, DriftReference, check_table

__all__ = [
    "DEFAULT_LEVELS",
    "DriftError",
    "DriftReference",
    "feature_drift",
    "ks_statistic",
    "median_bandwidth",
    "mmd2_unbiased",
    "wasserstein_1d",
]


def _sample(x: Any, name: str) -> np.ndarray:
    a = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if not np.isfinite(a).all():
        raise DriftError(f"{name} must be finite; drop missing values first (or pass a mask to feature_drift)")
    return a


def _cdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled sorted values z and both empirical CDFs evaluated at z (right-continuous)."""
    z = np.sort(np.concatenate([a, b]))
    return z, np.searchsorted(a, z, side="right") / a.size, np.searchsorted(b, z, side="right") / b.size


def ks_statistic(a: Any, b: Any) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|; NaN when a sample is empty."""
    a, b = _sample(a, "ks_statistic: a"), _sample(b, "ks_statistic: b")
    if a.size == 0 or b.size == 0:
        return float("nan")
    _, fa, fb = _cdfs(a, b)
    return float(np.abs(fa - fb).max())


def wasserstein_1d(a: Any, b: Any) -> float:
    """1-Wasserstein distance: integral of |F_a - F_b| dx; NaN when a sample is empty."""
    a, b = _sample(a, "wasserstein_1d: a"), _sample(b, "wasserstein_1d: b")
    if a.size == 0 or b.size == 0:
        return float("nan")
    z, fa, fb = _cdfs(a, b)
    return float(np.sum(np.abs(fa[:-1] - fb[:-1]) * np.diff(z)))


def _rows(X: Any, name: str, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or not np.isfinite(A).all():
        raise DriftError(f"{name} must be a finite (rows, d) array, got shape {A.shape}")
    if A.shape[0] > max_rows:
        A = A[np.sort(rng.choice(A.shape[0], max_rows, replace=False))]
    return A


def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d, 0.0)


def median_bandwidth(Z: Any) -> float:
    """Median of the pairwise Euclidean distances between distinct rows of Z (n, d); NaN when n < 2."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 2:
        return float("nan")
    iu = np.triu_indices(Z.shape[0], k=1)
    return float(np.median(np.sqrt(_sq_dists(Z, Z)[iu])))


def mmd2_unbiased(X: Any, Y: Any, bandwidth: float | None = None, max_rows: int = 2000, seed: int = 0) -> float:
    """Unbiased squared MMD with a Gaussian kernel (see the module docstring); NaN where undefined."""
    if bandwidth is not None and not (np.isfinite(bandwidth) and bandwidth > 0):
        raise DriftError(f"mmd2_unbiased: bandwidth must be finite and > 0 (or None), got {bandwidth!r}")
    if max_rows < 2:
        raise DriftError(f"mmd2_unbiased: max_rows must be >= 2, got {max_rows}")
    rng = np.random.default_rng(seed)
    X, Y = _rows(X, "mmd2_unbiased: X", max_rows, rng), _rows(Y, "mmd2_unbiased: Y", max_rows, rng)
    if X.shape[1] != Y.shape[1]:
        raise DriftError(f"mmd2_unbiased: X and Y need the same columns, got {X.shape[1]} and {Y.shape[1]}")
    n, m = X.shape[0], Y.shape[0]
    if n < 2 or m < 2:
        return float("nan")
    bw = median_bandwidth(np.concatenate([X, Y])) if bandwidth is None else float(bandwidth)
    if not bw > 0:
        return float("nan")
    g = -0.5 / bw**2
    kxx = np.exp(g * _sq_dists(X, X))
    kyy = np.exp(g * _sq_dists(Y, Y))
    kxy = np.exp(g * _sq_dists(X, Y))
    # U-statistic: the diagonals k(x_i, x_i) = 1 are left out of the within-sample means
    return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2.0 * kxy.mean())


def feature_drift(
    ref: Any,
    cur: Any,
    feature_names: Sequence[str],
    mask_ref: Any = None,
    mask_cur: Any = None,
    ks_threshold: float = 0.2,
) -> dict[str, Any]:
    """Per-feature KS and Wasserstein between ref (n, F) and cur (m, F) on present values.

    Returns {"per_feature": {name: {"ks", "wasserstein", "n_ref", "n_cur"}}, "drifted": names with
    ks > ks_threshold (in feature order), "ks_threshold"}.
    """
    names = list(feature_names)
    if not 0.0 <= ks_threshold <= 1.0:
        raise DriftError(f"feature_drift: ks_threshold must be in [0, 1], got {ks_threshold}")
    R, MR = check_table(ref, mask_ref, len(names), "feature_drift: ref")
    C, MC = check_table(cur, mask_cur, len(names), "feature_drift: cur")
    per: dict[str, dict[str, Any]] = {}
    for f, name in enumerate(names):
        a, b = R[MR[:, f], f], C[MC[:, f], f]
        per[name] = {"ks": ks_statistic(a, b), "wasserstein": wasserstein_1d(a, b), "n_ref": a.size, "n_cur": b.size}
    drifted = [n for n in names if per[n]["ks"] > ks_threshold]  # NaN compares False
    return {"per_feature": per, "drifted": drifted, "ks_threshold": float(ks_threshold)}
