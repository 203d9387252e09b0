"""POT calibration: GPD maximum likelihood on simulated tails, and thresholds against analytic quantiles."""

import numpy as np
import pytest

from scada_tcn.runtime.calibration import CalibrationError
from scada_tcn.trainer.calibration.evt import EVTError, fit_gpd, pot_threshold


def _gpd_sample(xi: float, sigma: float, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of GPD(xi, sigma) at uniforms u: F^-1(p) = sigma / xi ((1 - p)^-xi - 1), -sigma log(1 - p)."""
    return -sigma * np.log1p(-u) if xi == 0 else sigma / xi * ((1 - u) ** -xi - 1)


def _loglik(y: np.ndarray, xi: float, sigma: float) -> float:
    """From the density (1/sigma) (1 + xi y / sigma)^(-1/xi - 1), written independently of trainer.calibration.evt."""
    if xi == 0:
        return float(np.sum(-np.log(sigma) - y / sigma))
    t = 1 + xi * y / sigma
    return float(np.sum(-np.log(sigma) - (1 / xi + 1) * np.log(t))) if (t > 0).all() else -np.inf


@pytest.mark.parametrize("xi", [-0.2, 0.0, 0.3])
def test_fit_gpd_recovers_simulated_parameters(xi):
    y = _gpd_sample(xi, 2.0, np.random.default_rng(11).random(5000))
    xi_hat, sigma_hat = fit_gpd(y)
    assert abs(xi_hat - xi) < 0.06 and abs(sigma_hat / 2.0 - 1) < 0.06  # ~3 standard errors at n = 5000
    # it is the maximum: no point of a brute-force grid around it has a higher likelihood
    grid = [(a, b) for a in xi_hat + np.linspace(-0.05, 0.05, 21) for b in sigma_hat * np.linspace(0.95, 1.05, 21)]
    assert _loglik(y, xi_hat, sigma_hat) >= max(_loglik(y, a, b) for a, b in grid) - 1e-9


def test_fit_gpd_on_an_exact_exponential_tail_is_exponential():
    y = -np.log1p(-(np.arange(4000) + 0.5) / 4000)  # Exp(1) quantiles at the midpoints
    xi_hat, sigma_hat = fit_gpd(y * 3.0)
    assert abs(xi_hat) < 0.02 and abs(sigma_hat / 3.0 - 1) < 0.03


def test_pot_threshold_matches_the_analytic_exponential_quantile():
    n = 20_000
    exact = -np.log1p(-(np.arange(n) + 0.5) / n)  # Exp(1): P(S > z) = 1e-3 at z = log(1000)
    out = pot_threshold(exact, tail_quantile=0.98, target_exceedance_prob=1e-3)
    assert out["n_excess"] == 400 and out["u"] == pytest.approx(np.log(50), rel=1e-3)
    assert out["threshold"] == pytest.approx(np.log(1000), rel=0.01)
    sampled = pot_threshold(np.random.default_rng(12).exponential(size=n), 0.98, 1e-3)
    assert sampled["threshold"] == pytest.approx(np.log(1000), rel=0.05)


def test_pot_threshold_of_a_gpd_tail():
    # scores whose tail above 0 is GPD(0.3, 1) with zeta = 1: P(S > z) = (1 + 0.3 z)^(-1/0.3)
    s = _gpd_sample(0.3, 1.0, (np.arange(50_000) + 0.5) / 50_000)
    out = pot_threshold(s, tail_quantile=0.9, target_exceedance_prob=1e-4)
    assert out["threshold"] == pytest.approx((1e-4**-0.3 - 1) / 0.3, rel=0.03)


def test_pot_threshold_u_and_excesses_by_hand():
    s = np.arange(1.0, 2001.0)
    out = pot_threshold(s, tail_quantile=0.98, target_exceedance_prob=1e-3)
    assert out["u"] == pytest.approx(1 + 0.98 * 1999) and out["n_excess"] == 40  # 1961 .. 2000


def test_pot_threshold_refusals():
    s = np.random.default_rng(13).exponential(size=1000)
    with pytest.raises(EVTError, match="20 scores exceed .* fewer than min_excesses=30"):
        pot_threshold(s, 0.98, 1e-3)
    with pytest.raises(EVTError, match="not rarer than the tail share"):
        pot_threshold(s, 0.9, 0.2)
    with pytest.raises(EVTError, match="finite"):
        pot_threshold(np.append(s, np.inf), 0.9, 1e-3)
    with pytest.raises(EVTError, match="tail_quantile"):
        pot_threshold(s, 1.0, 1e-3)
    with pytest.raises(CalibrationError, match="excesses > 0"):  # an EVTError is a CalibrationError
        fit_gpd([1.0, -1.0, 2.0])
    with pytest.raises(EVTError, match="all excesses are equal"):
        fit_gpd([1.0, 1.0, 1.0])
