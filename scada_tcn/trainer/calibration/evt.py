"""Peaks-over-threshold (POT) calibration of anomaly-score thresholds with a generalized Pareto tail (numpy only).

Contract
--------
GPD of the excesses y = s - u > 0: P(Y > y) = (1 + xi y / sigma)^(-1/xi), and exp(-y / sigma) at xi = 0.

`fit_gpd(excesses)` is the maximum-likelihood fit through the profile likelihood of Grimshaw (1993): with
theta = xi / sigma, the likelihood is maximised over xi in closed form, xi(theta) = mean(log(1 + theta y)), which
leaves the one-dimensional profile l(theta) = -n log(xi(theta) / theta) - n xi(theta) - n on
theta > -1 / max(y). theta = 0 is the exponential limit (xi = 0, sigma = mean(y)) and is always a candidate, so
an exponential tail comes back with xi ~ 0 rather than a badly conditioned ratio. The profile is evaluated on a
grid of theta (log-spaced on both sides of 0, scaled by 1/max(y) below and 1/mean(y) above) and refined by a
golden-section search between the grid neighbours of the best point. xi is restricted to >= -1: below it the
likelihood is unbounded (the ML estimate does not exist), and a tail that needs it is a bounded score anyway.

`pot_threshold(scores, tail_quantile, target_exceedance_prob)`: u is the `tail_quantile` quantile of the scores
(np.quantile, linear), the excesses are s - u for s > u, zeta = n_excess / n, and the threshold z solves
P(S > z) = zeta * P(Y > z - u) = q:  z = u + sigma / xi * ((q / zeta)^(-xi) - 1),  or u - sigma log(q / zeta) at
xi = 0. Refused with EVTError (a CalibrationError, so a ValueError): non-finite scores, parameters out of range,
fewer than `min_excesses` excesses, and a target that is not rarer than the tail (q >= zeta).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scada_tcn.runtime.calibration import CalibrationError

__all__ = ["EVTError", "fit_gpd", "pot_threshold"]

_GRID = 241  # points per side of theta = 0
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


class EVTError(CalibrationError):
    """A POT calibration cannot be fitted from these scores or parameters."""


def _profile(y: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xi(theta) and the profile log-likelihood per theta (G,) (theta != 0); -inf where xi < -1."""
    chunks = np.array_split(theta, max(1, theta.size * y.size // 4_000_000))  # bounds the (G, n) temporary
    xi = np.concatenate([np.log1p(t[:, None] * y[None, :]).mean(axis=1) for t in chunks])  # (G,)
    ll = -y.size * (np.log(xi / theta) + xi + 1.0)
    return xi, np.where(xi >= -1.0, ll, -np.inf)


def _theta(z: np.ndarray, y_max: float, y_mean: float) -> np.ndarray:
    """Monotone map of the real line onto theta in (-1/y_max, inf), with theta(0) = 0."""
    return np.expm1(z) / np.where(z < 0, y_max, y_mean)


def fit_gpd(excesses: Any) -> tuple[float, float]:
    """Maximum-likelihood (xi, sigma) of positive excesses (at least 2, not all equal); see the module docstring."""
    y = np.asarray(excesses, dtype=np.float64).ravel()
    if y.size < 2 or not np.isfinite(y).all() or (y <= 0).any():
        raise EVTError(f"fit_gpd: need at least 2 finite excesses > 0, got {y.size} (min {y.min(initial=np.inf)})")
    if y.max() == y.min():
        raise EVTError("fit_gpd: all excesses are equal; a GPD cannot be fitted to a single value")
    y_max, y_mean = float(y.max()), float(y.mean())
    z = np.concatenate([-np.logspace(np.log10(30.0), -6, _GRID), np.logspace(-6, np.log10(16.0), _GRID)])
    xi_g, ll_g = _profile(y, _theta(z, y_max, y_mean))
    best = int(np.argmax(ll_g))
    lo, hi = z[max(best - 1, 0)], z[min(best + 1, z.size - 1)]
    for _ in range(60):  # golden-section on the bracket, shrinks it by 0.618^60
        a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
        la, lb = _profile(y, _theta(np.array([a, b]), y_max, y_mean))[1]
        lo, hi = (lo, b) if la >= lb else (a, hi)
    zs = np.array([0.5 * (lo + hi)])
    theta = _theta(zs, y_max, y_mean)
    xi_r, ll_r = _profile(y, theta) if theta[0] != 0.0 else (np.zeros(1), np.array([-np.inf]))
    ll_exp = -y.size * (np.log(y_mean) + 1.0)
    if ll_exp >= max(ll_r[0], ll_g[best]):
        return 0.0, y_mean
    if ll_r[0] >= ll_g[best]:
        return float(xi_r[0]), float(xi_r[0] / theta[0])
    return float(xi_g[best]), float(xi_g[best] / _theta(z[best : best + 1], y_max, y_mean)[0])


def pot_threshold(
    scores: Any,
    tail_quantile: float = 0.98,
    target_exceedance_prob: float = 1e-3,
    min_excesses: int = 30,
) -> dict[str, Any]:
    """POT threshold with P(score > threshold) = target_exceedance_prob.

    Returns {"threshold", "u", "xi", "sigma", "n_excess"}; see the module docstring for the formula and refusals.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise EVTError("pot_threshold: scores must be finite")
    if not 0.0 < tail_quantile < 1.0:
        raise EVTError(f"pot_threshold: tail_quantile must be in (0, 1), got {tail_quantile}")
    if not 0.0 < target_exceedance_prob < 1.0:
        raise EVTError(f"pot_threshold: target_exceedance_prob must be in (0, 1), got {target_exceedance_prob}")
    if isinstance(min_excesses, bool) or not isinstance(min_excesses, int) or min_excesses < 2:
        raise EVTError(f"pot_threshold: min_excesses must be an integer >= 2, got {min_excesses!r}")
    if s.size == 0:
        raise EVTError("pot_threshold: no scores")
    u = float(np.quantile(s, tail_quantile))
    y = s[s > u] - u
    if y.size < min_excesses:
        raise EVTError(
            f"pot_threshold: {y.size} scores exceed the {tail_quantile} quantile u={u:.6g}, fewer than "
            f"min_excesses={min_excesses}; give more scores (about {int(np.ceil(min_excesses / (1 - tail_quantile)))}"
            " at this tail_quantile) or lower tail_quantile"
        )
    zeta = y.size / s.size
    if target_exceedance_prob >= zeta:
        raise EVTError(
            f"pot_threshold: target_exceedance_prob={target_exceedance_prob} is not rarer than the tail share "
            f"{zeta:.4g} above u; use a percentile threshold or raise tail_quantile"
        )
    xi, sigma = fit_gpd(y)
    r = target_exceedance_prob / zeta
    z = u - sigma * np.log(r) if xi == 0.0 else u + sigma * np.expm1(-xi * np.log(r)) / xi
    return {"threshold": float(z), "u": u, "xi": xi, "sigma": sigma, "n_excess": int(y.size)}
